// One client connection, and the httplib::Stream a worker thread answers its requests through.
// The connection loop (event_loop.h) owns a Conn while it waits for bytes; once a whole request
// has arrived in `in`, a worker owns it, and httplib reads the request out of `in` through
// ConnStream (the socket only past it: a chunked body). Writes go to the socket with a timeout.
#pragma once

#include <httplib.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>

#include "serve/request_head.h"

namespace nibble::serve {

using Clock = std::chrono::steady_clock;

struct Conn {
  enum class State {
    Idle,       // no request under way: closed after the idle timeout
    Reading,    // part of a request arrived: the rest must come before `deadline`
    Busy,       // a worker answers it; the loop does not touch it
    Lingering,  // closing: our side shut down, its unread input is read and dropped until EOF
  };
  explicit Conn(int f) : fd(f) {}
  int fd;
  State state = State::Idle;
  Clock::time_point deadline;       // Idle, Reading, Lingering: when the loop gives up on it
  Clock::time_point started;        // Reading: the request's first byte arrived
  std::string in;                   // received, not yet consumed: the request under way, then pipelined ones
  std::optional<RequestHead> head;  // the request under way, once its head arrived
  bool continue_sent = false;       // the loop answered its "Expect: 100-continue"
  size_t served = 0;                // requests answered on this connection
  bool refused = false;             // over the connection cap: answered 503, lingering until closed
  bool paused = false;              // not read for now: the loop holds too many request bytes
};

// httplib::Stream over a Conn: reads come from conn.in first, then from the socket (waiting up to
// read_timeout for each piece); writes wait up to write_timeout for room in the socket buffer.
class ConnStream final : public httplib::Stream {
 public:
  ConnStream(Conn& c, std::chrono::milliseconds read_timeout, std::chrono::milliseconds write_timeout)
      : c_(c), read_timeout_(read_timeout), write_timeout_(write_timeout) {}
  bool is_readable() const override;
  // Room to write within the write timeout, and the peer has not closed the connection.
  bool is_writable() const override;
  ssize_t read(char* ptr, size_t size) override;
  ssize_t write(const char* ptr, size_t size) override;
  void get_remote_ip_and_port(std::string& ip, int& port) const override;
  void get_local_ip_and_port(std::string& ip, int& port) const override;
  socket_t socket() const override { return c_.fd; }
  // Bytes of conn.in that httplib has read (reads past it append to conn.in).
  size_t consumed() const { return pos_; }

 private:
  Conn& c_;
  const std::chrono::milliseconds read_timeout_, write_timeout_;
  size_t pos_ = 0;
};

// The socket of the request this thread is answering (-1 outside a request): a handler that waits
// for its answer checks whether its client is still there (connection.h's peer_closed).
int current_request_socket();

class CurrentRequestSocket {  // sets it for a scope
 public:
  explicit CurrentRequestSocket(int fd);
  ~CurrentRequestSocket();
  CurrentRequestSocket(const CurrentRequestSocket&) = delete;
  CurrentRequestSocket& operator=(const CurrentRequestSocket&) = delete;
};

}  // namespace nibble::serve
