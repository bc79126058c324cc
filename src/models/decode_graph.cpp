// Decode steps as replayed CUDA graphs. A step (B sequences, one token each, last-row logits)
// enqueues ~20 kernels a layer; launched one by one from the host, their launch cost exceeds
// their run time on a large GPU. So the step runs in "device position" mode (Step::device_pos:
// the KV write and attention read each sequence's position from a device array), which makes
// the enqueued work identical from one step to the next, and is captured once and replayed:
//   1st step of a (batch, cache buffers) key: run normally (grows the context's workspaces and
//      uploads the code tables, so nothing allocates persistent memory or synchronises later);
//   2nd step: capture the same work, instantiate, launch;
//   later steps: copy ids / positions / rope rows into the graph's input buffers, launch.
// The key holds every K/V buffer address, so a cache that grew (or a new cache that happens to
// sit at an old one's address with other buffers) gets its own graph; at most kMaxGraphs are
// kept. NIBBLE_CUDA_GRAPHS=0 turns graphs off; a model split over devices never captures (its
// steps cross devices, and a graph is one stream's work).
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "models/causal_lm_impl.h"
#include "nibble/error.h"
#ifdef NIBBLE_WITH_CUDA
#include "backends/cuda/runtime.h"
#endif

namespace nibble {

#ifdef NIBBLE_WITH_CUDA

namespace {
constexpr size_t kMaxGraphs = 8;
}

struct DecodeGraph {
  std::vector<const void*> key;
  int state = 0;  // 0: run uncaptured next; 1: capture next; 2: captured; -1: never capture
  void* exec = nullptr;
  Tensor ids, pos, cos, sin;  // device inputs: i64 [B], i64 [B], f32 [B, half] x 2
  Tensor kv_table;            // i64 [L, 2, B] cache addresses (B > 1), fixed by the key
  Tensor logits;              // f32 [B, V] on the device
  void* host = nullptr;       // pinned mirror of the inputs, packed
  size_t host_bytes = 0;
  uint64_t last_use = 0;
  DecodeGraph() = default;
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;
  ~DecodeGraph() {
    cuda::graph_destroy(exec);
    if (host) cuda::host_pinned_free(host);
  }
};

struct DecodeGraphs {
  std::mutex mu;
  std::vector<std::unique_ptr<DecodeGraph>> list;
  uint64_t clock = 0, launches = 0;
};

uint64_t CausalLM::Impl::graph_launches() const {
  if (!graphs) return 0;
  std::lock_guard<std::mutex> lock(graphs->mu);
  return graphs->launches;
}

bool CausalLM::Impl::graph_eligible(const std::vector<std::vector<int64_t>>& batch, bool last_only) const {
  static const bool enabled = [] {
    const char* e = std::getenv("NIBBLE_CUDA_GRAPHS");
    return !(e && std::string(e) == "0");
  }();
  if (!enabled || !device.is_cuda() || place.split() || !last_only || batch.empty() || batch.size() > 16)
    return false;
  for (const auto& s : batch)
    if (s.size() != 1) return false;
  // A LoRA adapter's term allocates its temporaries per call (nn::lora_forward): not captured.
  for (const NamedLinear* nl : linears())
    if (nl->lora.defined()) return false;
  return true;
}

Tensor CausalLM::Impl::decode_graphed(const std::vector<std::vector<int64_t>>& batch,
                                      std::span<KVCache* const> caches) const {
  Step st = plan_host(batch, caches);  // checks ids, grows caches that may grow
  const int64_t B = st.R, half = st.rot_dim / 2, V = lm_head.lin.out_features();
  ExecContext& ctx = *st.ctx;

  std::vector<const void*> key{reinterpret_cast<const void*>(B)};
  for (const Segment& sg : st.segs) {
    key.push_back(reinterpret_cast<const void*>(sg.cache->capacity_));
    for (size_t l = 0; l < layers.size(); ++l) {
      key.push_back(sg.cache->k_[l].data_ptr());
      key.push_back(sg.cache->v_[l].data_ptr());
    }
  }
  if (!graphs) graphs = std::make_shared<DecodeGraphs>();
  std::lock_guard<std::mutex> lock(graphs->mu);
  DecodeGraph* g = nullptr;
  for (auto& e : graphs->list)
    if (e->key == key) g = e.get();
  if (!g) {
    if (graphs->list.size() >= kMaxGraphs) {  // drop the least recently used
      size_t lru = 0;
      for (size_t i = 1; i < graphs->list.size(); ++i)
        if (graphs->list[i]->last_use < graphs->list[lru]->last_use) lru = i;
      graphs->list.erase(graphs->list.begin() + std::ptrdiff_t(lru));
    }
    auto e = std::make_unique<DecodeGraph>();
    e->key = key;
    e->ids = Tensor::empty({B}, DType::I64, device);
    e->pos = Tensor::empty({B}, DType::I64, device);
    if (half > 0) {
      e->cos = Tensor::empty({B, half}, DType::F32, device);
      e->sin = Tensor::empty({B, half}, DType::F32, device);
    }
    e->logits = Tensor::empty({B, V}, DType::F32, device);
    if (B > 1) {  // the key holds these addresses, so the table is this graph's for good
      const int64_t L = int64_t(layers.size());
      Tensor tab = Tensor::empty({L, 2, B}, DType::I64);
      int64_t* t = tab.data<int64_t>();
      for (int64_t l = 0; l < L; ++l)
        for (int64_t b = 0; b < B; ++b) {
          const KVCache& c = *st.segs[size_t(b)].cache;
          for (int kv = 0; kv < 2; ++kv) {
            const auto a = reinterpret_cast<uintptr_t>((kv == 0 ? c.k_ : c.v_)[size_t(l)].data_ptr());
            if (a % 16 != 0)  // the attention kernels' vector loads (cuda::Attention::kv_table)
              throw InternalError("decode graph: a KV cache of layer " + std::to_string(l) +
                                  " is not 16-byte aligned");
            t[(l * 2 + kv) * B + b] = int64_t(a);
          }
        }
      e->kv_table = tab.to(device);
    }
    e->host_bytes = size_t(2 * B) * 8 + size_t(2 * B * half) * 4;
    e->host = cuda::host_pinned_malloc(e->host_bytes);
    g = e.get();
    graphs->list.push_back(std::move(e));
  }
  g->last_use = ++graphs->clock;

  // inputs: host mirror (the previous step's copy out of it has finished) -> device buffers
  ctx.synchronize();
  char* h = static_cast<char*>(g->host);
  std::vector<int64_t> p0(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) p0[size_t(b)] = st.segs[size_t(b)].p0;
  std::memcpy(h, st.ids.data(), size_t(B) * 8);
  std::memcpy(h + B * 8, p0.data(), size_t(B) * 8);
  if (half > 0) {
    std::memcpy(h + 2 * B * 8, st.cos_h.data(), size_t(B * half) * 4);
    std::memcpy(h + 2 * B * 8 + B * half * 4, st.sin_h.data(), size_t(B * half) * 4);
  }
  const int dev = device.index;
  void* stream = ctx.stream();
  cuda::memcpy_async(g->ids.data_ptr(), h, size_t(B) * 8, 0, dev, stream);
  cuda::memcpy_async(g->pos.data_ptr(), h + B * 8, size_t(B) * 8, 0, dev, stream);
  if (half > 0) {
    cuda::memcpy_async(g->cos.data_ptr(), h + 2 * B * 8, size_t(B * half) * 4, 0, dev, stream);
    cuda::memcpy_async(g->sin.data_ptr(), h + 2 * B * 8 + B * half * 4, size_t(B * half) * 4, 0, dev, stream);
  }
  st.ids_dev = g->ids;
  st.seq_pos = g->pos;
  st.kv_table = g->kv_table;
  st.cos = g->cos;
  st.sin = g->sin;
  st.device_pos = true;

  auto run = [&] {
    Tensor x = embed_block(st);  // [B, C]
    decoder_layers(st, x);
    head_block(st, x, true, g->logits);
  };
  if (g->state == 1) {
    try {
      cuda::graph_capture_begin(stream);
      try {
        run();
      } catch (...) {
        try {
          cuda::graph_destroy(cuda::graph_capture_end(stream));
        } catch (...) {
        }
        throw;
      }
      g->exec = cuda::graph_capture_end(stream);
      g->state = 2;
    } catch (const std::exception&) {
      g->state = -1;  // this key runs uncaptured from now on (nothing of the capture ran)
    }
  }
  if (g->state == 2) {
    cuda::graph_launch(g->exec, stream);
    ++graphs->launches;
  } else {
    run();
    if (g->state == 0) g->state = 1;
  }
  for (const Segment& sg : st.segs) sg.cache->len_ = sg.p0 + sg.T;
  return g->logits;
}

#else

struct DecodeGraphs {};

uint64_t CausalLM::Impl::graph_launches() const {
  return 0;
}

bool CausalLM::Impl::graph_eligible(const std::vector<std::vector<int64_t>>&, bool) const {
  return false;
}

Tensor CausalLM::Impl::decode_graphed(const std::vector<std::vector<int64_t>>&,
                                      std::span<KVCache* const>) const {
  throw InternalError("decode_graphed: this build has no CUDA backend");
}

#endif

}  // namespace nibble
