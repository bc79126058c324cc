// AtomicFile: the write-to-temp + fsync + rename protocol behind every file nibble writes, so
// a crash or an error mid-write leaves either the old file or the new one, never a torn one.
// Streaming writers (safetensors shards of many GB) write through it piece by piece.
#pragma once

#include <cstddef>
#include <filesystem>

namespace nibble::io {

class AtomicFile {
 public:
  // Creates `.<name>.tmp.<pid>.<random>` beside target; IoError naming target if it cannot.
  explicit AtomicFile(const std::filesystem::path& target);
  // Removes the temporary file unless commit() succeeded (also on exceptions in between).
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  // fsync the file, rename it over the target, fsync the folder. IoError on failure.
  void commit();

  const std::filesystem::path& temp_path() const { return temp_; }

 private:
  std::filesystem::path target_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace nibble::io
