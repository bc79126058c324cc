// Running the built `nibble` binary from the CLI golden tests (NIBBLE_CLI is its path, defined
// for test_golden by tests/CMakeLists.txt).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "test_support.h"

namespace nibble::test {

using CliRun = CommandResult;

// `nibble args...`, each argument quoted, with `input` on stdin.
inline CliRun run_cli(const std::vector<std::string>& args, const std::string& input = "") {
  std::string cmd = shell_quote(NIBBLE_CLI);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  return run_command(cmd, input);
}

// `nibble args` with args an already shell-quoted string.
inline CliRun nibble_cli(const std::string& args) {
  return run_command(std::string(NIBBLE_CLI) + " " + args);
}

inline std::string q(const std::filesystem::path& p) {
  return shell_quote(p.string());
}

}  // namespace nibble::test
