// safetensors I/O. The reader mmaps the file, validates the whole header up front (length,
// JSON, dtypes, shapes, offsets, overlaps, sizes) and hands out zero-copy tensor views that
// keep the mapping alive. The writer produces the header as the Python safetensors library
// does (names sorted, header padded with spaces to a multiple of 8, `__metadata__` first with
// {"format": "pt"} plus caller entries) into a temporary file in the target folder, fsyncs it
// and renames it into place, so an interrupted write never leaves a truncated file.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nibble/tensor.h"

namespace nibble {

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the start of the data section
};

class SafetensorsFile {
 public:
  // Opens and validates; throws IoError (cannot open/map) or FormatError naming the file and,
  // where it applies, the tensor and field at fault.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  // Tensor names in file order of their data offsets.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  const TensorInfo& info(const std::string& name) const;  // throws FormatError if absent
  // Zero-copy host view into the mapping; the mapping lives as long as any view.
  Tensor get(const std::string& name) const;
  // Drops the resident pages of a tensor's bytes (madvise DONTNEED on the whole pages inside
  // its range) once a caller has consumed it, e.g. quantized it: peak memory then stays near
  // the output plus one tensor. Later reads fault the bytes back in from the file.
  void release(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  size_t file_size() const;

 private:
  std::filesystem::path path_;
  std::shared_ptr<Storage> map_;  // whole file mapping
  size_t data_start_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, TensorInfo> index_;
  std::map<std::string, std::string> metadata_;
};

// Parses a safetensors header from a byte buffer (the same validation as open()); `origin`
// names the source in error messages. Exposed for tests and for streaming readers.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
  size_t data_start = 0;  // 8 + header length
};
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& origin);

// A checkpoint folder: model.safetensors, or the shards named by model.safetensors.index.json.
class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir);
  std::vector<std::string> names() const;  // all tensor names, sorted
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  Tensor get(const std::string& name) const;
  void release(const std::string& name) const;  // see SafetensorsFile::release
  const TensorInfo& info(const std::string& name) const;
  // __metadata__ of the first shard (aliases such as tied weights live there).
  const std::map<std::string, std::string>& metadata() const;
  const std::vector<SafetensorsFile>& files() const { return files_; }

 private:
  std::filesystem::path dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

struct SaveOptions {
  std::map<std::string, std::string> metadata;  // merged into {"format": "pt"}
  // Add {"format": "pt"} as transformers does. false writes `metadata` alone, and no
  // "__metadata__" at all when it is empty (as safetensors.torch.save_file(t) without metadata).
  bool format_pt = true;
};
// Writes host tensors (any strides; written contiguous) atomically to `path`.
void save_safetensors(const std::filesystem::path& path, const std::map<std::string, Tensor>& tensors,
                      const SaveOptions& opts = {});
// The exact bytes save_safetensors would write (header + data), for tests and in-memory use.
std::vector<uint8_t> serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                           const SaveOptions& opts = {});

// Writes bytes to path through a temporary file in the same folder + fsync + rename.
void write_file_atomic(const std::filesystem::path& path, const void* data, size_t n);

}  // namespace nibble
