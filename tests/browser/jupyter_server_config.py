# Jupyter Server config used by the browser tests (copied into the test server's JUPYTER_CONFIG_DIR).
#
# Turns on TCP_NODELAY for kernel websockets. Without it, the small comm messages that carry a widget
# update (a mouse move in, a label update out) wait on Nagle's algorithm and the peer's delayed ACK:
# about 40 ms of a 50 ms round trip on loopback. Tornado exposes this as WebSocketHandler.set_nodelay,
# and Jupyter Server lets us choose the websocket connection class, so no private API is patched.
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection


class NoDelayZMQChannelsWebsocketConnection(ZMQChannelsWebsocketConnection):
    """The default kernel websocket connection, with TCP_NODELAY set once the websocket is open."""

    def connect(self):
        self.websocket_handler.set_nodelay(True)
        return super().connect()


c = get_config()  # noqa: F821 (injected by traitlets when it loads this file)
c.ServerApp.kernel_websocket_connection_class = NoDelayZMQChannelsWebsocketConnection
