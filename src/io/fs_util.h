// Small POSIX helpers shared by the atomic writers (atomic_file.cpp, atomic_dir.cpp).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "nibble/error.h"

namespace nibble::io::detail_fs {

// "cannot <what> <path>: <strerror(err)>", the one-line message of an IoError.
inline std::string os_error(const std::string& what, const std::filesystem::path& path, int err) {
  return nibble::detail::str("cannot ", what, " ", path.string(), ": ", std::strerror(err));
}

// 16 hex digits for temporary names beside a target.
inline std::string random_suffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

// fsync of a folder, so the names in it (a rename into it) are durable. Returns 0, or the errno
// of fsync; -1 when the folder cannot be opened. Filesystems that cannot fsync a folder (EINVAL,
// EROFS) count as success: the data itself is already safe there.
inline int fsync_folder(const std::filesystem::path& dir) {
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return -1;
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  return rc != 0 && err != EINVAL && err != EROFS ? err : 0;
}

}  // namespace nibble::io::detail_fs
