// Checkpoint: a Hugging Face weights folder seen as one name -> tensor map, whether it holds
// model.safetensors or shards listed in model.safetensors.index.json. The index is trusted
// for nothing: every shard it names must sit inside the folder and hold the tensors mapped to
// it, and no tensor may live in two shards.
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/read_file.h"
#include "nibble/error.h"
#include "nibble/safetensors.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace nibble {

using detail::str;

namespace {

[[noreturn]] void index_error(const fs::path& index, const std::string& msg) {
  throw FormatError(index.string() + ": " + msg);
}

// A shard named by the index must be a relative path that stays inside the folder.
bool escapes_folder(const fs::path& p) {
  if (p.empty() || p.has_root_path()) return true;
  for (const auto& part : p.lexically_normal())
    if (part == "..") return true;
  return false;
}

// weight_map of the index: tensor name -> shard file name (relative to the folder).
std::map<std::string, std::string> read_weight_map(const fs::path& index) {
  const std::string text = io::read_text_file(index);
  json j;
  try {
    j = io::parse_json(text);
  } catch (const io::JsonLimitError& e) {
    index_error(index, e.what());
  } catch (const json::exception&) {
    index_error(index, "not valid JSON");
  }
  if (!j.is_object()) index_error(index, "not a JSON object");
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) index_error(index, "missing 'weight_map' object");
  std::map<std::string, std::string> out;
  for (const auto& [name, shard] : wm->items()) {
    if (!shard.is_string()) index_error(index, "weight_map entry for tensor '" + name + "' is not a string");
    out[name] = shard.get<std::string>();
  }
  return out;
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw IoError("cannot open checkpoint " + dir.string() + ": not a folder");
  Checkpoint c;
  c.dir_ = dir;
  const fs::path index = dir / "model.safetensors.index.json";
  const fs::path single = dir / "model.safetensors";

  if (!fs::exists(index, ec)) {
    if (!fs::exists(single, ec))
      throw IoError("cannot open checkpoint " + dir.string() +
                    ": it holds neither model.safetensors nor model.safetensors.index.json");
    c.files_.push_back(SafetensorsFile::open(single));
    for (const std::string& n : c.files_[0].names()) c.where_[n] = 0;
    return c;
  }

  // Group by shard so each file is opened (mapped, validated) once; std::map keeps the
  // shards in name order, so "the first shard" is model-00001-of-N.
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [name, shard] : read_weight_map(index)) {
    if (escapes_folder(fs::path(shard)))
      index_error(index, "tensor '" + name + "': shard path '" + shard + "' escapes the checkpoint folder");
    by_shard[shard].push_back(name);
  }
  for (const auto& [shard, names] : by_shard) {
    fs::path p = dir / shard;
    if (!fs::is_regular_file(p, ec))
      index_error(index, "tensor '" + names.front() + "': shard '" + shard + "' does not exist");
    c.files_.push_back(SafetensorsFile::open(p));
    const SafetensorsFile& f = c.files_.back();
    for (const std::string& n : names)
      if (!f.contains(n))
        index_error(index, "tensor '" + n + "' is mapped to shard '" + shard + "' but is not in it");
    for (const std::string& n : f.names()) {
      auto [it, fresh] = c.where_.emplace(n, c.files_.size() - 1);
      if (!fresh)
        index_error(index, "tensor '" + n + "' is in both shard '" +
                               c.files_[it->second].path().filename().string() + "' and shard '" + shard +
                               "'");
    }
  }
  return c;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    throw FormatError(dir_.string() + ": no tensor named '" + name + "' in the checkpoint");
  return files_[it->second].info(name);
}

Tensor Checkpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    throw FormatError(dir_.string() + ": no tensor named '" + name + "' in the checkpoint");
  return files_[it->second].get(name);
}

void Checkpoint::release(const std::string& name) const {
  auto it = where_.find(name);
  if (it != where_.end()) files_[it->second].release(name);
}

const std::map<std::string, std::string>& Checkpoint::metadata() const {
  static const std::map<std::string, std::string> none;
  return files_.empty() ? none : files_.front().metadata();
}

}  // namespace nibble
