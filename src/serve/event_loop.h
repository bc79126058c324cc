// The server's connections: one thread accepts them and waits, with epoll, for their bytes; a
// worker thread is given a connection only once a whole request has arrived on it, and gives it
// back after answering. An idle connection, or one whose request trickles in, costs a descriptor
// and a few bytes, never a thread, so thousands of them do not keep others waiting. The loop
// enforces the deadlines (idle, request head, body progress), the cap on open connections and
// one on the request bytes it holds, answering 408 / 431 / 503 itself where no worker is needed.
//
//   ConnectionLoop loop(opts, pool, [](Conn& c) { ...answer the request in c.in...; return After::KeepAlive;
//   },
//                       metrics);
//   int port = loop.listen("127.0.0.1", 0);
//   loop.start();
//   ...
//   loop.stop_accepting();  // new connections refused, idle ones closed
//   pool.shutdown();        // in-flight requests end
//   loop.quit();
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "serve/conn_stream.h"

namespace nibble::serve {

class Metrics;

struct LoopOptions {
  size_t max_connections = 16384;                   // past it, a new connection gets 503 and is closed
  std::chrono::milliseconds idle_timeout{30000};    // no request under way (fresh, or between requests)
  std::chrono::milliseconds header_timeout{10000};  // from a request's first byte to its blank line
  std::chrono::milliseconds read_timeout{10000};    // between two pieces of a body
  std::chrono::milliseconds request_timeout{60000};  // from a request's first byte to its last
  size_t max_body_bytes = size_t(8) << 20;          // a larger declared body is not waited for (413)
  size_t max_head_bytes = size_t(64) << 10;         // a larger request head gets 431
  // Request bytes the loop holds, all connections together. Past it, a connection is read no
  // further than a head's worth (max_head_bytes): larger bodies wait in the kernel, their read
  // timeout running, until others' requests move on; small requests go on. So clients that send
  // most of a large body and stall make the server hold at most this, plus max_head_bytes a
  // connection, plus one read (256 KiB).
  size_t max_buffered_bytes = size_t(256) << 20;
};

// What a worker leaves a connection in.
enum class After {
  KeepAlive,  // wait for its next request (c.in may already hold it)
  Linger,     // close after the answer: shut our side, drop what the client still sends, then close
  Close,      // close now (the client is gone)
};

class ConnectionLoop {
 public:
  // serve runs on a worker with a Conn whose c.in starts with a request that has fully arrived
  // (its head in c.head; its body too, chunked or not, unless larger than max_body_bytes).
  using Serve = std::function<After(Conn&)>;
  ConnectionLoop(LoopOptions o, httplib::TaskQueue& workers, Serve serve, Metrics& metrics);
  ~ConnectionLoop();  // stop_accepting() and quit(); the workers must be idle by then
  ConnectionLoop(const ConnectionLoop&) = delete;
  ConnectionLoop& operator=(const ConnectionLoop&) = delete;

  // Binds host:port (0: a free port) and listens; IoError when it cannot. Returns the port.
  int listen(const std::string& host, int port);
  int listen_fd() const { return listen_fd_; }
  void start();
  // Closes the listening socket (new connections are refused by the kernel) and every connection
  // no worker holds; those that workers give back later are closed. Returns once done.
  void stop_accepting();
  // Closes what is left and joins the loop's thread; after the workers are shut down.
  void quit();
  size_t open_connections() const { return open_.load(std::memory_order_relaxed); }

 private:
  void run();
  void accept_all(Clock::time_point now);
  void admit(int fd, Clock::time_point now);
  void refuse(int fd, Clock::time_point now);
  void on_event(Conn& c, Clock::time_point now);
  void progress(Conn& c, Clock::time_point now);  // dispatch c if its request is complete, else re-arm
  void dispatch(Conn& c);
  void back_from_worker(Conn& c, After a, Clock::time_point now);
  void reject(Conn& c, int status, const std::string& message, Clock::time_point now);
  void linger(Conn& c, Clock::time_point until);
  void arm(Conn& c, bool add = false);
  void close_conn(Conn& c);
  bool over_budget(const Conn& c) const;  // the byte cap is passed and c holds a head's worth
  // t, or the end of c's request_timeout if sooner (c.started: its request's first byte).
  Clock::time_point within_request(const Conn& c, Clock::time_point t) const;
  void pause(Conn& c);
  void resume_paused();
  void close_all(bool busy_too);
  void sweep(Clock::time_point now);
  void wake();

  const LoopOptions opt_;
  httplib::TaskQueue& workers_;
  const Serve serve_;
  Metrics& metrics_;
  int listen_fd_ = -1, epoll_fd_ = -1, wake_fd_ = -1;
  std::thread thread_;

  // The loop's thread only.
  std::vector<std::unique_ptr<Conn>> conns_;  // by descriptor
  size_t refused_lingering_ = 0;              // refused connections still lingering (not in open_)
  size_t buffered_ = 0;                       // c.in bytes of Idle and Reading connections
  std::vector<int> paused_;                   // connections not read while buffered_ is past its cap
  bool accept_paused_ = false;                // out of descriptors: the listener rests a moment
  Clock::time_point accept_resume_;
  std::atomic<size_t> open_{0};  // admitted connections, busy ones included

  // Between workers / stop() and the loop.
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<Conn*, After>> returned_;
  bool stop_accepting_ = false, accepting_stopped_ = false, quit_ = false;
};

}  // namespace nibble::serve
