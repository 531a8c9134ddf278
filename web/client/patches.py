"""Pure data patches for cached REST data: each builder returns fn(old) -> new, never mutating old.

Used for events with complete payloads (apply the story/escalation/project object) and for
optimistic overlays (set a field, append a placeholder, adjust counts). Objects carry a version
(`updatedAt`, else `resolvedAt`, else `createdAt`); an older version never replaces a newer one.
"""

from . import wire


def version(obj):
    if not isinstance(obj, dict):
        return None
    for field in ("updatedAt", "resolvedAt", "createdAt"):
        value = obj.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def not_older(new, old):
    vn = version(new)
    vo = version(old)
    if vn is None or vo is None:
        return True
    return vn >= vo


def replace(obj):
    """For a single-object key (project): take obj unless the cached one is newer."""

    def fn(old):
        if isinstance(old, dict) and not not_older(obj, old):
            return old
        return obj

    return fn


def upsert(item):
    """For a list key: replace the element with the same id (unless newer) or append."""

    def fn(old):
        if not isinstance(old, list):
            return old
        out = []
        found = False
        for element in old:
            if isinstance(element, dict) and element.get("id") == item.get("id"):
                found = True
                out.append(item if not_older(item, element) else element)
            else:
                out.append(element)
        if not found:
            out.append(item)
        return out

    return fn


def set_fields(item_id, changes):
    """For a list key: copy of the element `item_id` with `changes` merged in."""

    def fn(old):
        if not isinstance(old, list):
            return old
        out = []
        for element in old:
            if isinstance(element, dict) and element.get("id") == item_id:
                element = dict(element)
                for key in changes:
                    element[key] = changes[key]
            out.append(element)
        return out

    return fn


def append(item):
    def fn(old):
        if not isinstance(old, list):
            return old
        return old + [item]

    return fn


def _shift(project, deltas):
    counts = project.get("counts")
    if not isinstance(counts, dict):
        return project
    counts = dict(counts)
    for name in deltas:
        value = counts.get(name)
        if wire.is_int(value):
            counts[name] = value + deltas[name]
    project = dict(project)
    project["counts"] = counts
    return project


def adjust_counts(deltas):
    """For ("project", pid): counts[name] += delta."""

    def fn(old):
        if not isinstance(old, dict):
            return old
        return _shift(old, deltas)

    return fn


def adjust_counts_in_list(project_id, deltas):
    """For ("projects",): the same shift on the element with id `project_id`."""

    def fn(old):
        if not isinstance(old, list):
            return old
        return [_shift(p, deltas) if isinstance(p, dict) and p.get("id") == project_id else p for p in old]

    return fn


def find(items, item_id):
    if isinstance(items, list):
        for element in items:
            if isinstance(element, dict) and element.get("id") == item_id:
                return element
    return None
