// A connection's stream for httplib; see conn_stream.h.
#include "serve/conn_stream.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "serve/connection.h"

namespace nibble::serve {

namespace {

thread_local int tls_request_socket = -1;

// poll() for `events` up to timeout, restarted on EINTR; true when ready.
bool wait_for(int fd, short events, std::chrono::milliseconds timeout) {
  const auto until = Clock::now() + timeout;
  for (;;) {
    pollfd p{fd, events, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
    const int n = ::poll(&p, 1, int(std::max<int64_t>(0, left.count())));
    if (n > 0) return (p.revents & (events | POLLHUP | POLLERR)) != 0;
    if (n == 0 || errno != EINTR) return false;
  }
}

void endpoint(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  const int rc = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len)
                      : getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ip.clear();
  port = 0;
  if (rc != 0) return;
  char buf[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(a);
    inet_ntop(AF_INET, &v4.sin_addr, buf, sizeof buf);
    port = ntohs(v4.sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(a);
    inet_ntop(AF_INET6, &v6.sin6_addr, buf, sizeof buf);
    port = ntohs(v6.sin6_port);
  }
  ip = buf;
}

}  // namespace

bool ConnStream::is_readable() const {
  return pos_ < c_.in.size() || wait_for(c_.fd, POLLIN, read_timeout_);
}

bool ConnStream::is_writable() const {
  return wait_for(c_.fd, POLLOUT, write_timeout_) && !peer_closed(c_.fd);
}

ssize_t ConnStream::read(char* ptr, size_t size) {
  if (pos_ == c_.in.size()) {
    // Past what the loop received (a chunked body): read more from the socket.
    char buf[16384];
    for (;;) {
      const ssize_t n = ::recv(c_.fd, buf, sizeof buf, 0);
      if (n > 0) {
        c_.in.append(buf, size_t(n));
        break;
      }
      if (n == 0) return 0;
      if (errno == EINTR) continue;
      if ((errno != EAGAIN && errno != EWOULDBLOCK) || !wait_for(c_.fd, POLLIN, read_timeout_)) return -1;
    }
  }
  const size_t n = std::min(size, c_.in.size() - pos_);
  std::memcpy(ptr, c_.in.data() + pos_, n);
  pos_ += n;
  return ssize_t(n);
}

ssize_t ConnStream::write(const char* ptr, size_t size) {
  // httplib answers "Expect: 100-continue" itself; when the loop already did (to get the body
  // before handing the request over), a second interim response is dropped.
  static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
  if (c_.continue_sent && std::string_view(ptr, size) == kContinue) {
    c_.continue_sent = false;
    return ssize_t(size);
  }
  for (;;) {
    const ssize_t n = ::send(c_.fd, ptr, size, MSG_NOSIGNAL);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if ((errno != EAGAIN && errno != EWOULDBLOCK) || !wait_for(c_.fd, POLLOUT, write_timeout_)) return -1;
  }
}

void ConnStream::get_remote_ip_and_port(std::string& ip, int& port) const {
  endpoint(c_.fd, true, ip, port);
}

void ConnStream::get_local_ip_and_port(std::string& ip, int& port) const {
  endpoint(c_.fd, false, ip, port);
}

int current_request_socket() {
  return tls_request_socket;
}

CurrentRequestSocket::CurrentRequestSocket(int fd) {
  tls_request_socket = fd;
}

CurrentRequestSocket::~CurrentRequestSocket() {
  tls_request_socket = -1;
}

}  // namespace nibble::serve
