// Errors: typed exceptions for anything a user can cause (a bad file, a bad config, a wrong
// shape), each message saying what and where; NIBBLE_CHECK for internal invariants.
// Library code never calls exit().
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace nibble {

// Base of every nibble exception; what() is one line naming the file/tensor/field at fault.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A file that cannot be opened, read or written (the OS said no).
class IoError : public Error {
 public:
  using Error::Error;
};

// A file whose content is malformed (safetensors header, JSON, quant_state blob, ...).
class FormatError : public Error {
 public:
  using Error::Error;
};

// An invalid configuration value (BitsAndBytesConfig, config.json field, option).
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Shapes or dtypes that do not fit an operation.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// A (device, dtype) pair or feature this build does not support.
class UnsupportedError : public Error {
 public:
  using Error::Error;
};

// An internal invariant was violated: a bug in nibble, not in the user's input.
class InternalError : public Error {
 public:
  using Error::Error;
};

namespace detail {
[[noreturn]] void check_failed(const char* expr, const char* file, int line, const std::string& msg);

// Concatenates streamable values into one string: str("tensor ", name, " has ", n, " dims").
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  if constexpr (sizeof...(Args) > 0) (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace nibble

// Always-on invariant check (also in Release). The message is optional streamable context.
#define NIBBLE_CHECK(cond, ...)                                                                \
  do {                                                                                         \
    if (!(cond)) [[unlikely]]                                                                  \
      ::nibble::detail::check_failed(#cond, __FILE__, __LINE__, ::nibble::detail::str(__VA_ARGS__)); \
  } while (0)
