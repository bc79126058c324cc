# Sourced by bench/vs_llamacpp.sh and bench/serve_vs_llamaserver.sh: TinyStories-656K as llama.cpp
# GGUF files in $WORK/ts (f32.gguf, q4_0.gguf), made once. Needs WORK TS PY CONVERT LLAMA_BIN THREADS.
tinystories_gguf() {
  if [ ! -f "$WORK/ts/f32.gguf" ]; then
    # The checkpoint holds only lm_head.weight (tied; transformers fills the embedding from it);
    # llama.cpp wants token_embd too, so a copy with model.embed_tokens.weight added is converted.
    mkdir -p "$WORK/ts/hf"
    cp "$TS"/*.json "$WORK/ts/hf/"
    "$PY" -c 'import sys; from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1]); t.setdefault("model.embed_tokens.weight", t["lm_head.weight"].copy())
save_file(t, sys.argv[2], metadata={"format": "pt"})' "$TS/model.safetensors" "$WORK/ts/hf/model.safetensors"
    "$PY" bench/llamacpp_convert.py "$CONVERT" "$WORK/ts/hf" --outtype f32 --outfile "$WORK/ts/f32.gguf"
  fi
  [ -f "$WORK/ts/q4_0.gguf" ] || "$LLAMA_BIN/llama-quantize" "$WORK/ts/f32.gguf" "$WORK/ts/q4_0.gguf" Q4_0 "$THREADS"
}
