// check_failed: formats an invariant failure as one line and throws InternalError.
#include "nibble/error.h"

namespace nibble::detail {

void check_failed(const char* expr, const char* file, int line, const std::string& msg) {
  std::string s = str("internal check failed: ", expr, " at ", file, ":", line);
  if (!msg.empty()) s += str(" (", msg, ")");
  throw InternalError(s);
}

}  // namespace nibble::detail
