// See atomic_dir.h: build the new folder beside the old one, then swap the two names in one
// rename (RENAME_EXCHANGE), so readers and crashes see the old folder or the new one.
#include "io/atomic_dir.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "io/fs_util.h"
#include "nibble/error.h"

namespace fs = std::filesystem;

namespace nibble::io {

using detail_fs::os_error;
using detail_fs::random_suffix;

namespace {

// The folder as one path with a last component: "out/" and "out/." name "out"; a symlink to a
// folder is followed, so the folder it points at is replaced and the link kept.
fs::path normalize_target(const fs::path& target) {
  fs::path p = fs::absolute(target).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  std::error_code ec;
  if (fs::is_symlink(p, ec)) {
    fs::path real = fs::canonical(p, ec);
    if (!ec) p = real;
  }
  return p;
}

// Staging folders of writers that no longer run: `.<name>.tmp.<pid>.<random>` beside target.
void remove_stale_staging(const fs::path& parent, const std::string& name) {
  const std::string prefix = "." + name.substr(0, 160) + ".tmp.";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) != 0) continue;
    const long pid = std::strtol(n.c_str() + prefix.size(), nullptr, 10);
    if (pid <= 0 || pid == long(::getpid())) continue;
    if (::kill(pid_t(pid), 0) == 0 || errno != ESRCH) continue;  // its writer may still run
    std::error_code rm;
    fs::remove_all(e.path(), rm);
  }
}

// fsync of every folder under (and including) dir: the names of the new folder's entries.
void fsync_tree(const fs::path& dir) {
  fsync_dir(dir);
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec))
    if (e.is_directory(ec) && !e.is_symlink(ec)) fsync_dir(e.path());
}

// An entry of the old folder that the new one does not own: hard links (the same bytes, no
// copy), a plain copy where the filesystem has no hard links.
void carry_over(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  const auto opts = fs::copy_options::recursive | fs::copy_options::copy_symlinks;
  fs::copy(from, to, opts | fs::copy_options::create_hard_links, ec);
  if (!ec) return;
  fs::remove_all(to, ec);
  try {
    fs::copy(from, to, opts);
  } catch (const fs::filesystem_error& e) {
    throw IoError(os_error("carry over", from, e.code().value()));
  }
}

}  // namespace

void fsync_dir(const fs::path& dir) {
  const int err = detail_fs::fsync_folder(dir);
  if (err < 0) throw IoError(os_error("open folder", dir, errno));
  if (err > 0) throw IoError(os_error("fsync folder", dir, err));
}

AtomicDir::AtomicDir(const fs::path& target, std::function<bool(const std::string&)> owned)
    : target_(normalize_target(target)), owned_(std::move(owned)) {
  std::error_code ec;
  if (fs::exists(target_, ec) && !fs::is_directory(target_, ec))
    throw IoError(detail::str("cannot write ", target_.string(), ": it exists and is not a folder"));
  const fs::path parent = target_.parent_path();
  fs::create_directories(parent, ec);
  if (ec) throw IoError(os_error("create folder", parent, ec.value()));
  const std::string name = target_.filename().string();
  remove_stale_staging(parent, name);
  // The name is cut so the staging name stays within NAME_MAX (255) for any legal target.
  const std::string stem = "." + name.substr(0, 160) + ".tmp." + std::to_string(::getpid()) + ".";
  for (int attempt = 0; attempt < 16; ++attempt) {
    staging_ = parent / (stem + random_suffix());
    if (::mkdir(staging_.c_str(), 0777) == 0) return;
    if (errno != EEXIST) break;
  }
  int err = errno;
  staging_.clear();
  throw IoError(os_error("write", target_, err));
}

AtomicDir::~AtomicDir() {
  if (staging_.empty()) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);  // after commit() this is the old content
}

void AtomicDir::commit() {
  std::error_code ec;
  const bool replacing = fs::is_directory(target_, ec);
  if (replacing) {
    std::vector<std::string> names;
    try {
      for (const auto& e : fs::directory_iterator(target_)) names.push_back(e.path().filename().string());
    } catch (const fs::filesystem_error& e) {
      throw IoError(os_error("read folder", target_, e.code().value()));
    }
    for (const std::string& n : names) {
      if (owned_ && owned_(n)) continue;
      if (n.front() == '.' && n.find(".tmp.") != std::string::npos) continue;  // a dead writer's temporary
      std::error_code missing;
      if (fs::exists(fs::symlink_status(staging_ / n, missing))) continue;  // written anew
      carry_over(target_ / n, staging_ / n);
    }
  }
  fsync_tree(staging_);
  const fs::path parent = target_.parent_path();
  // A process working inside the folder keeps working in it: the exchange moves the old inode
  // away, so the working directory follows the name (cwd_inside: its path under target, if any).
  std::error_code cwd_ec;
  const fs::path cwd = fs::current_path(cwd_ec);
  const fs::path cwd_inside = cwd_ec ? fs::path() : cwd.lexically_relative(target_);
  const bool follow_cwd = !cwd_inside.empty() && *cwd_inside.begin() != "..";
  if (!replacing) {
    if (::rename(staging_.c_str(), target_.c_str()) != 0)
      throw IoError(os_error("write (rename)", target_, errno));
    staging_.clear();
  } else if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
    // staging_ now names the old content
  } else if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) {
    // A filesystem without RENAME_EXCHANGE: move the old folder aside, then the new one in.
    // Between the two renames the target name is absent for an instant (the old content is
    // complete under the hidden name, removed as stale by the next save).
    const fs::path aside = parent / ("." + target_.filename().string().substr(0, 160) + ".tmp." +
                                     std::to_string(::getpid()) + ".old." + random_suffix());
    if (::rename(target_.c_str(), aside.c_str()) != 0)
      throw IoError(os_error("write (rename)", target_, errno));
    if (::rename(staging_.c_str(), target_.c_str()) != 0) {
      int err = errno;
      (void)::rename(aside.c_str(), target_.c_str());
      throw IoError(os_error("write (rename)", target_, err));
    }
    staging_ = aside;
  } else {
    throw IoError(os_error("write (exchange)", target_, errno));
  }
  if (follow_cwd) (void)::chdir((target_ / cwd_inside).c_str());
  fsync_dir(parent);
  if (!staging_.empty()) {
    fs::remove_all(staging_, ec);
    staging_.clear();
  }
}

}  // namespace nibble::io
