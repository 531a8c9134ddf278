"""STUB (to be replaced): WebSocket endpoint."""


async def realtime_endpoint(websocket) -> None:
    await websocket.close(1011)
