# Runs llama.cpp's own convert_hf_to_gguf.py (path given first) on bench/vs_llamacpp.sh's random
# Llama-3.2-1B-shape folder. That folder carries the fixtures' cropped Llama-3 BPE tokenizer
# (a few thousand tokens; the converter pads the vocabulary to the config's 128256), whose
# pre-tokenizer hash the converter does not know, so the pre-tokenizer is named here as the
# real Llama-3 one, "llama-bpe". Everything else is the converter's.
#   python llamacpp_convert.py .../convert_hf_to_gguf.py HF_DIR --outtype bf16 --outfile X.gguf
import os
import sys

script = sys.argv.pop(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
import convert_hf_to_gguf  # noqa: E402
import conversion.base  # noqa: E402

conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "llama-bpe"
sys.argv[0] = script
convert_hf_to_gguf.main()
