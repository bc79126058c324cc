// AtomicDir: replacing a whole folder (a model saved by save_pretrained, a peft adapter, a
// training checkpoint) so that a crash at any moment leaves either the complete old folder or
// the complete new one under the final name, never a mix of the two.
//
// Files of one folder cannot be replaced one by one atomically (a crash between the weights
// and config.json would pair new weights with an old config), so the new folder is built in a
// hidden sibling `.<name>.tmp.<pid>.<random>`, every file in it fsynced (AtomicFile), the
// sibling itself fsynced, and then the two folders swap names in one step:
// renameat2(RENAME_EXCHANGE) when the target exists, rename(2) when it does not; the parent
// folder is fsynced and the old content (now under the sibling's name) removed. Entries of the
// old folder that the writer does not own (a tokenizer.json beside the weights, a README) are
// hard-linked into the new folder first, so they survive the swap unchanged.
//
//   io::AtomicDir d(dir, [](const std::string& name) { return name == "config.json"; });
//   write_file_atomic(d.path() / "config.json", ...);
//   d.commit();
//
// Leftovers of a writer killed before commit() (its staging sibling) or during the removal of
// the old content are hidden siblings; the next AtomicDir for the same target removes those
// whose writer process no longer exists.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

namespace nibble::io {

class AtomicDir {
 public:
  // owned(name): whether a top-level entry of an existing target is written by this writer
  // (then it is not carried over; a stale shard must not outlive the save). IoError naming
  // target when the staging folder cannot be made.
  AtomicDir(const std::filesystem::path& target, std::function<bool(const std::string&)> owned);
  // Removes the staging folder unless commit() succeeded.
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  // Where the new folder's files are written.
  const std::filesystem::path& path() const { return staging_; }
  // Carries over the unowned entries, fsyncs, swaps the staging folder into target's place,
  // fsyncs the parent and removes the old content. IoError naming target on failure (the
  // target is then unchanged).
  void commit();

 private:
  std::filesystem::path target_, staging_;
  std::function<bool(const std::string&)> owned_;
};

// fsync of a folder (its entries' names); EINVAL/EROFS (filesystems that cannot) are ignored.
void fsync_dir(const std::filesystem::path& dir);

}  // namespace nibble::io
