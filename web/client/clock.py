"""Portable calendar arithmetic: epoch milliseconds from UTC calendar fields.

MicroPython's JavaScript bridge turns an integer-valued JS number into a 32-bit int, so `Date.now()`
(about 1.8e12) reaches Python wrapped. The browser adapter (`client.browser.ffi.epoch_now`) reads the
small UTC fields of a `Date` instead and calls `epoch_ms(...)`.
"""


def days_from_civil(year, month, day):
    """Days since 1970-01-01 of a proleptic Gregorian date (month 1-12)."""
    if month <= 2:
        year -= 1
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month - 3 if month > 2 else month + 9) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def epoch_ms(year, month, day, hours=0, minutes=0, seconds=0, millis=0):
    """Epoch milliseconds of a UTC time given by its fields (month 1-12)."""
    days = days_from_civil(year, month, day)
    return ((days * 24 + hours) * 60 + minutes) * 60000 + seconds * 1000 + millis
