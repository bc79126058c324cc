// TextStreamer: the text each new token adds, for printing while generating. Decoding a token
// alone is wrong in two ways — a sentencepiece decoder drops the leading space of the first
// token it sees, and a byte-fallback token may hold only part of a UTF-8 character — so the
// streamer decodes a window [prefix_offset, end) of recent ids, compares with the window's
// already-printed part [prefix_offset, read_offset), and releases the difference only when it
// does not end in U+FFFD (the decoder's stand-in for an incomplete character).
#include "nibble/generate.h"

namespace nibble {

namespace {
bool ends_with_replacement_char(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}
}  // namespace

TextStreamer::TextStreamer(std::function<std::string(const std::vector<int64_t>&)> decode)
    : decode_(std::move(decode)) {}

std::string TextStreamer::window(size_t from, size_t to) const {
  if (from >= to) return {};
  return decode_(std::vector<int64_t>(ids_.begin() + int64_t(from), ids_.begin() + int64_t(to)));
}

std::string TextStreamer::push(std::span<const int64_t> ids) {
  ids_.insert(ids_.end(), ids.begin(), ids.end());
  const std::string printed = window(prefix_offset_, read_offset_);
  const std::string text = window(prefix_offset_, ids_.size());
  if (text.size() <= printed.size() || ends_with_replacement_char(text)) return {};
  // The printed part is a prefix of the longer decode for the decoders HF has (what went out
  // cannot be taken back in any case).
  std::string out = text.substr(printed.size());
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return out;
}

std::string TextStreamer::flush() {
  const std::string printed = window(prefix_offset_, read_offset_);
  const std::string text = window(prefix_offset_, ids_.size());
  prefix_offset_ = read_offset_ = ids_.size();
  return text.size() > printed.size() ? text.substr(printed.size()) : std::string();
}

}  // namespace nibble
