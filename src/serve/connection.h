// Finding a request's own TCP socket, to notice a client that left while its non-streamed
// answer is being generated. cpp-httplib 0.11 does not give handlers the connection's socket;
// the connection is identified by its endpoints instead (local port, peer address and port: the
// TCP 4-tuple), among this process's socket descriptors. A streamed answer needs none of this:
// httplib's data sink reports a closed peer itself.
#pragma once

#include <string>

namespace nibble::serve {

// The descriptor of this process's TCP socket with these endpoints, -1 when none. O(open fds).
int find_tcp_connection(int local_port, const std::string& peer_addr, int peer_port);
// The peer closed or reset the connection (POLLHUP / POLLRDHUP / POLLERR); pipelined bytes
// waiting to be read do not count.
bool peer_closed(int fd);

}  // namespace nibble::serve
