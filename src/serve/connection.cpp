// Has a client closed its connection; see connection.h.
#include "serve/connection.h"

#include <poll.h>

namespace nibble::serve {

bool peer_closed(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) != 0;
}

}  // namespace nibble::serve
