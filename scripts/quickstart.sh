#!/usr/bin/env bash
# One command from a fresh machine to a searched, retrained and exported model, offline on 2 CPU cores:
#   1. install (apt dataset-fashion-mnist + pinned pip packages);
#   2. search: DARTS on Fashion-MNIST made long-tailed (ratio 100)          -> runs/quickstart/search/
#   3. retrain the genotype it found (aux head, drop-path, cutout)          -> runs/quickstart/train/
#   4. export to SavedModel + ONNX with a parity check                      -> export/quickstart/
#   5. classify test images with ONNX Runtime alone (no TensorFlow)
# Extra flags go to the search, e.g. --method=hlrs. Rerunning resumes/reuses what is finished.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN="${RUN:-runs/quickstart}"
python3 -m hlrs_tf.search --flagfile=configs/quickstart.cfg --workdir="$RUN/search" "$@"
python3 -m hlrs_tf.train --genotype="$RUN/search/genotype.json" --flagfile=configs/retrain_quick.cfg \
  --workdir="$RUN/train"
python3 -m hlrs_tf.export --model="$RUN/train" --out=export/quickstart
python3 - <<'PY'
# 20 real Fashion-MNIST test images as an .npz for the TensorFlow-free inference script.
import gzip, numpy as np
d = "/usr/share/datasets/fashion-mnist/"
x = np.frombuffer(gzip.open(d + "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
np.savez("export/quickstart/sample.npz", x=x[:20])
PY
python3 export/predict_onnx.py export/quickstart export/quickstart/sample.npz --out=export/quickstart/predictions.csv
