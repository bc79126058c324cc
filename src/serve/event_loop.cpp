// The accept + epoll loop in front of the worker threads; see event_loop.h.
//
// Every connection is registered EPOLLONESHOT: an event disarms it, and the loop re-arms it only
// while the connection is its own (Idle, Reading, Lingering). A Busy connection is the worker's
// alone until it is handed back through returned_ (and the eventfd that wakes the loop), so the
// two threads never touch one Conn at the same time, and a descriptor is never closed (and its
// number reused) while a worker uses it. Deadlines are checked by a sweep every 100 ms.
#include "serve/event_loop.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "nibble/error.h"
#include "serve/metrics.h"
#include "serve/openai_request.h"
#include "serve/openai_response.h"

namespace nibble::serve {

using namespace std::chrono_literals;

namespace {

constexpr auto kSweepEvery = 100ms;
constexpr auto kLinger = 5s;                 // after a close we decided: the client's leftovers are dropped
constexpr auto kRefusedLinger = 1s;          // a connection refused at the cap
constexpr size_t kMaxRefusedLingering = 64;  // more refusals than this at once are closed at once
// Bytes read from one socket per event: fairness, and how far the byte cap can be overshot.
constexpr size_t kReadPerEvent = size_t(256) << 10;

const char* reason(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 431:
      return "Request Header Fields Too Large";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    default:
      return "Error";
  }
}

// A whole response with an OpenAI error body, for the loop to send without a worker.
std::string canned(const ApiError& e) {
  const std::string body = dump(error_json(e));
  std::string r = detail::str("HTTP/1.1 ", e.status(), " ", reason(e.status()),
                              "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
                              "\r\nConnection: close\r\n");
  if (e.status() == 503) r += "Retry-After: 1\r\n";
  return r + "\r\n" + body;
}

// Best effort: a fresh or idle socket has room for a small response.
void send_now(int fd, const std::string& data) {
  (void)::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

// Reads what is there into `into` (or drops it when null); false when the peer closed or failed.
bool read_available(int fd, std::string* into, size_t limit, size_t& got) {
  char buf[16384];
  got = 0;
  while (got < limit) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      if (into) into->append(buf, size_t(n));
      got += size_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
  return true;
}

}  // namespace

ConnectionLoop::ConnectionLoop(LoopOptions o, httplib::TaskQueue& workers, Serve serve, Metrics& metrics)
    : opt_(o), workers_(workers), serve_(std::move(serve)), metrics_(metrics) {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0)
    throw IoError(detail::str("serve: cannot create the connection loop: ", std::strerror(errno)));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wake_fd_;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
}

ConnectionLoop::~ConnectionLoop() {
  stop_accepting();
  quit();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  ::close(wake_fd_);
  ::close(epoll_fd_);
}

int ConnectionLoop::listen(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  const std::string service = std::to_string(port);
  if (getaddrinfo(host.c_str(), service.c_str(), &hints, &res) == 0) {
    for (addrinfo* a = res; a && listen_fd_ < 0; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      // SO_REUSEADDR (restart while old connections sit in TIME_WAIT), not SO_REUSEPORT, which
      // would let a second server bind the same port and take half the connections.
      int yes = 1, no = 0;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      if (a->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &no, sizeof no);
      // A deep backlog: a burst of clients waits in the kernel instead of seeing dropped SYNs.
      if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 4096) == 0)
        listen_fd_ = fd;
      else
        ::close(fd);
    }
    freeaddrinfo(res);
  }
  if (listen_fd_ < 0)
    throw IoError(detail::str("serve: cannot listen on ", host, ":", port,
                              " (address in use, or not an address of this machine)"));
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd_;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
  return addr.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6&>(addr).sin6_port)
                                    : ntohs(reinterpret_cast<sockaddr_in&>(addr).sin_port);
}

void ConnectionLoop::start() {
  thread_ = std::thread([this] { run(); });
}

void ConnectionLoop::wake() {
  const uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
}

void ConnectionLoop::stop_accepting() {
  std::unique_lock lock(mu_);
  stop_accepting_ = true;
  if (!thread_.joinable()) return;
  wake();
  cv_.wait(lock, [&] { return accepting_stopped_; });
}

void ConnectionLoop::quit() {
  {
    std::lock_guard lock(mu_);
    quit_ = true;
  }
  if (!thread_.joinable()) return;
  wake();
  thread_.join();
}

void ConnectionLoop::run() {
  epoll_event events[256];
  Clock::time_point next_sweep = Clock::now() + kSweepEvery;
  bool stopped_accepting = false;
  for (;;) {
    const int n = epoll_wait(epoll_fd_, events, 256, int(kSweepEvery.count()));
    Clock::time_point now = Clock::now();
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == wake_fd_) {
        uint64_t v = 0;
        (void)!::read(wake_fd_, &v, sizeof v);
      } else if (fd == listen_fd_) {
        if (!stopped_accepting) accept_all(now);
      } else if (size_t(fd) < conns_.size() && conns_[size_t(fd)]) {
        on_event(*conns_[size_t(fd)], now);
      }
    }
    std::vector<std::pair<Conn*, After>> back;
    bool stop = false, quit = false;
    {
      std::lock_guard lock(mu_);
      back.swap(returned_);
      stop = stop_accepting_;
      quit = quit_;
    }
    if (stop && !stopped_accepting) {
      stopped_accepting = true;
      if (listen_fd_ >= 0) ::close(listen_fd_);  // pending connections in the backlog are reset
      listen_fd_ = -1;
      close_all(/*busy_too=*/false);
      std::lock_guard lock(mu_);
      accepting_stopped_ = true;
      cv_.notify_all();
    }
    for (auto& [c, a] : back) back_from_worker(*c, stopped_accepting ? After::Close : a, now);
    if (quit) {
      close_all(/*busy_too=*/true);
      return;
    }
    if (accept_paused_ && now >= accept_resume_ && listen_fd_ >= 0) {
      accept_paused_ = false;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = listen_fd_;
      epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
    }
    if (!paused_.empty() && buffered_ <= opt_.max_buffered_bytes) resume_paused();
    metrics_.set_buffered_bytes(buffered_);
    now = Clock::now();
    if (now >= next_sweep) {
      sweep(now);
      next_sweep = now + kSweepEvery;
    }
  }
}

void ConnectionLoop::accept_all(Clock::time_point now) {
  for (int k = 0; k < 1024; ++k) {  // the rest next turn: the listener is level-triggered
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      if (open_.load(std::memory_order_relaxed) >= opt_.max_connections)
        refuse(fd, now);
      else
        admit(fd, now);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      // Out of descriptors: the listener would report the same pending connection again at once.
      // Rest it for a moment; the connection waits in the backlog.
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
      accept_paused_ = true;
      accept_resume_ = now + 100ms;
    }
    return;
  }
}

void ConnectionLoop::admit(int fd, Clock::time_point now) {
  int yes = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);  // SSE events go out as written
  if (conns_.size() <= size_t(fd)) conns_.resize(size_t(fd) + 1);
  conns_[size_t(fd)] = std::make_unique<Conn>(fd);
  Conn& c = *conns_[size_t(fd)];
  c.deadline = now + opt_.idle_timeout;
  metrics_.set_connections(open_.fetch_add(1, std::memory_order_relaxed) + 1);
  arm(c, /*add=*/true);
}

void ConnectionLoop::refuse(int fd, Clock::time_point now) {
  metrics_.on_connection_refused();
  size_t got = 0;
  read_available(fd, nullptr, kReadPerEvent, got);  // a request already sent would turn close into a reset
  send_now(fd, canned(ApiError(503,
                               detail::str("The server has too many open connections (", opt_.max_connections,
                                           "); retry later."),
                               {}, "server_error", "too_many_connections")));
  if (refused_lingering_ >= kMaxRefusedLingering) {
    ::close(fd);
    return;
  }
  // Lingering, so that the client reads the 503 instead of a reset.
  if (conns_.size() <= size_t(fd)) conns_.resize(size_t(fd) + 1);
  conns_[size_t(fd)] = std::make_unique<Conn>(fd);
  Conn& c = *conns_[size_t(fd)];
  c.refused = true;
  ++refused_lingering_;
  ::shutdown(fd, SHUT_WR);
  c.state = Conn::State::Lingering;
  c.deadline = now + kRefusedLinger;
  arm(c, /*add=*/true);
}

void ConnectionLoop::arm(Conn& c, bool add) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
  ev.data.fd = c.fd;
  epoll_ctl(epoll_fd_, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c.fd, &ev);
}

void ConnectionLoop::on_event(Conn& c, Clock::time_point now) {
  size_t got = 0;
  if (c.state == Conn::State::Lingering) {
    if (!read_available(c.fd, nullptr, kReadPerEvent, got)) return close_conn(c);
    return arm(c);
  }
  if (c.state == Conn::State::Busy) return;  // not armed; cannot happen
  // Past the byte cap, a connection reads no further than a head's worth.
  if (over_budget(c)) return pause(c);
  const size_t limit =
      buffered_ > opt_.max_buffered_bytes ? opt_.max_head_bytes - c.in.size() : kReadPerEvent;
  const bool open = read_available(c.fd, &c.in, limit, got);
  buffered_ += got;
  if (!open) return close_conn(c);  // the client left (a half-closed client has nobody to answer)
  if (got > 0 && c.state == Conn::State::Idle) {
    c.state = Conn::State::Reading;
    c.started = now;
    c.deadline = within_request(c, now + opt_.header_timeout);  // the whole head, however it trickles
  } else if (got > 0 && c.head) {
    c.deadline = within_request(c, now + opt_.read_timeout);  // the body: each piece within the read timeout
  }
  progress(c, now);
}

void ConnectionLoop::progress(Conn& c, Clock::time_point now) {
  if (c.in.empty()) return arm(c);
  if (!c.head) {
    c.head = parse_request_head(c.in);
    if (!c.head || c.head->head_bytes > opt_.max_head_bytes) {
      if (c.in.size() <= opt_.max_head_bytes) return arm(c);
      return reject(c, 431, detail::str("The request head is larger than ", opt_.max_head_bytes, " bytes."),
                    now);
    }
    c.deadline = within_request(c, now + opt_.read_timeout);
  }
  RequestHead& h = *c.head;
  if (h.other_coding)
    return reject(c, 501, "The request's Transfer-Encoding is not supported (only chunked).", now);
  if (h.chunked && h.has_length)  // which one ends the body is a request-smuggling question
    return reject(c, 400, "The request has both Content-Length and Transfer-Encoding.", now);
  bool wait_body = false;
  if (h.chunked) {  // the whole chunked body arrives here too: a worker never waits on a client
    const ChunkedScan b = scan_chunked_body(c.in, h.head_bytes, opt_.max_body_bytes, opt_.max_head_bytes);
    if (b.state == ChunkedScan::State::TooLarge)
      return reject(c, 413, detail::str("The request body is larger than the limit of ", opt_.max_body_bytes, " bytes."),
                    now);
    if (b.state == ChunkedScan::State::Malformed) return reject(c, 400, "The chunked request body is malformed.", now);
    h.chunked_end = b.end;
    wait_body = b.state == ChunkedScan::State::Incomplete;
  } else {
    wait_body = !h.bad_length && h.content_length <= opt_.max_body_bytes && c.in.size() < h.body_end();
  }
  if (!wait_body) return dispatch(c);
  if (over_budget(c)) return pause(c);
  if (h.expect_continue && !c.continue_sent) {  // the client waits for this before its body
    send_now(c.fd, "HTTP/1.1 100 Continue\r\n\r\n");
    c.continue_sent = true;
  }
  arm(c);
}

Clock::time_point ConnectionLoop::within_request(const Conn& c, Clock::time_point t) const {
  return std::min(t, c.started + opt_.request_timeout);
}

bool ConnectionLoop::over_budget(const Conn& c) const {
  return buffered_ > opt_.max_buffered_bytes && c.in.size() >= opt_.max_head_bytes;
}

void ConnectionLoop::pause(Conn& c) {
  c.paused = true;  // read again once others' requests have moved on (resume_paused)
  paused_.push_back(c.fd);
}

void ConnectionLoop::resume_paused() {
  std::vector<int> fds;
  fds.swap(paused_);
  for (int fd : fds) {
    Conn* c = conns_[size_t(fd)].get();
    if (!c || !c->paused) continue;  // closed (or its number reused) meanwhile
    c->paused = false;
    arm(*c);  // pauses again if the cap is passed again
  }
}

void ConnectionLoop::dispatch(Conn& c) {
  buffered_ -= c.in.size();  // the worker's now
  c.state = Conn::State::Busy;
  Conn* p = &c;
  workers_.enqueue([this, p] {
    After a = After::Close;
    try {
      a = serve_(*p);
    } catch (...) {
      // serve_ answers errors itself; anything escaping it leaves the connection unusable
    }
    {
      std::lock_guard lock(mu_);
      returned_.emplace_back(p, a);
    }
    wake();
  });
}

void ConnectionLoop::back_from_worker(Conn& c, After a, Clock::time_point now) {
  if (a == After::Close) return close_conn(c);
  c.head.reset();
  c.continue_sent = false;
  if (a == After::Linger) return linger(c, now + kLinger);
  if (c.in.empty()) {
    if (c.in.capacity() > opt_.max_head_bytes) std::string().swap(c.in);  // a large body's buffer
    c.state = Conn::State::Idle;
    c.deadline = now + opt_.idle_timeout;
    return arm(c);
  }
  buffered_ += c.in.size();
  c.state = Conn::State::Reading;  // a pipelined request, whole or in part
  c.started = now;
  c.deadline = within_request(c, now + opt_.header_timeout);
  progress(c, now);
}

void ConnectionLoop::reject(Conn& c, int status, const std::string& message, Clock::time_point now) {
  buffered_ -= c.in.size();  // a Reading connection's
  send_now(c.fd, canned(ApiError(status, message)));
  linger(c, now + kLinger);
}

void ConnectionLoop::linger(Conn& c, Clock::time_point until) {
  // Closing with unread input would send a reset, which may destroy the answer before the client
  // reads it: shut our side (the client sees the end after the answer), drop what still comes.
  ::shutdown(c.fd, SHUT_WR);
  c.state = Conn::State::Lingering;
  c.paused = false;
  c.deadline = until;
  c.head.reset();
  std::string().swap(c.in);
  arm(c);
}

void ConnectionLoop::close_conn(Conn& c) {
  const int fd = c.fd;
  if (c.state == Conn::State::Idle || c.state == Conn::State::Reading) buffered_ -= c.in.size();
  if (c.refused)
    --refused_lingering_;
  else
    metrics_.set_connections(open_.fetch_sub(1, std::memory_order_relaxed) - 1);
  ::close(fd);  // also leaves the epoll set
  conns_[size_t(fd)].reset();
}

void ConnectionLoop::close_all(bool busy_too) {
  for (auto& p : conns_)
    if (p && (busy_too || p->state != Conn::State::Busy)) close_conn(*p);
}

void ConnectionLoop::sweep(Clock::time_point now) {
  for (auto& p : conns_) {
    if (!p || p->state == Conn::State::Busy || now < p->deadline) continue;
    Conn& c = *p;
    if (c.state == Conn::State::Reading) {
      metrics_.on_request_timeout();
      reject(c, 408, "The request did not arrive in time.", now);
    } else {
      close_conn(c);  // idle past the keep-alive time, or done lingering
    }
  }
}

uint64_t fd_limit() {
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  return lim.rlim_cur;
}

uint64_t raise_fd_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    rlimit want = lim;
    want.rlim_cur = lim.rlim_max;
    // An unlimited hard limit is still bounded by fs.nr_open; 2^20 is its default.
    if (setrlimit(RLIMIT_NOFILE, &want) != 0 && lim.rlim_max == RLIM_INFINITY) {
      want.rlim_cur = rlim_t(1) << 20;
      setrlimit(RLIMIT_NOFILE, &want);
    }
  }
  return fd_limit();
}

}  // namespace nibble::serve
