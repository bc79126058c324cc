// Noticing a client that left while its answer is being generated: its socket (the worker's,
// conn_stream.h's current_request_socket()) reports the peer's close.
#pragma once

namespace nibble::serve {

// The peer closed or reset the connection (POLLHUP / POLLRDHUP / POLLERR); pipelined bytes
// waiting to be read do not count.
bool peer_closed(int fd);

}  // namespace nibble::serve
