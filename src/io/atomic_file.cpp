// Atomic file replacement: write a hidden temporary beside the target, fsync it, rename it
// over the target (atomic within one filesystem), then fsync the folder so the rename itself
// survives a power cut. Any failure removes the temporary and throws IoError naming the path.
#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>

#include "io/fs_util.h"
#include "nibble/error.h"
#include "nibble/safetensors.h"

namespace fs = std::filesystem;

namespace nibble::io {

using detail_fs::os_error;
using detail_fs::random_suffix;

namespace {

fs::path parent_or_dot(const fs::path& p) {
  fs::path parent = p.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

}  // namespace

AtomicFile::AtomicFile(const fs::path& target) : target_(target) {
  if (!target.has_filename())
    throw IoError(detail::str("cannot write ", target.string(), ": the path names no file"));
  fs::path dir = parent_or_dot(target);
  std::string stem = "." + target.filename().string() + ".tmp." + std::to_string(::getpid()) + ".";
  // O_EXCL: never write into someone else's file; retry on the (unlikely) name collision.
  for (int attempt = 0; attempt < 16; ++attempt) {
    temp_ = dir / (stem + random_suffix());
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0) return;
    if (errno != EEXIST) break;
  }
  int err = errno;
  temp_.clear();
  throw IoError(os_error("write", target, err));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    // Linux writes at most ~2 GiB per call; loop for partial writes and signals.
    ssize_t w = ::write(fd_, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IoError(os_error("write", target_, errno));
    }
    p += w;
    n -= size_t(w);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) throw IoError(os_error("write (fsync)", target_, errno));
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw IoError(os_error("write (close)", target_, errno));
  if (::rename(temp_.c_str(), target_.c_str()) != 0) throw IoError(os_error("write (rename)", target_, errno));
  committed_ = true;
  // Make the new directory entry durable. Some filesystems cannot fsync a folder (EINVAL);
  // the data itself is already safe there, so only real I/O errors are reported.
  const int err = detail_fs::fsync_folder(parent_or_dot(target_));
  if (err > 0) throw IoError(os_error("write (fsync folder of)", target_, err));
}

}  // namespace nibble::io

namespace nibble {

void write_file_atomic(const fs::path& path, const void* data, size_t n) {
  io::AtomicFile f(path);
  f.write(data, n);
  f.commit();
}

}  // namespace nibble
