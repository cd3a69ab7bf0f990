#!/usr/bin/env bash
# Build a clip-retrieval index from a job's embeddings/ folder in an isolated environment, then check it.
#   bash infra/clip-retrieval/check.sh demo-output/t2i/embeddings [index-folder]
# clip-retrieval 2.45 pins pyarrow<16, fire<0.6 and numpy 1.x, so it cannot share this project's environment.
# Its `index` command is clip_retrieval/clip_index.py (autofaiss); the package's __init__ imports its web back
# end and the torch inference stack, which indexing never uses, so the module is run as the script it is.
set -euo pipefail
embeddings=$(realpath "$1")
index=${2:-$(mktemp -d)/index}
env=${CLIP_RETRIEVAL_ENV:-.cache/clip-retrieval-env}
python=${PYTHON:-python3.11}
if [ ! -x "$env/bin/python" ]; then
  "$python" -m venv "$env"
  "$env/bin/pip" install -q --no-deps "clip-retrieval==2.45.0"
  "$env/bin/pip" install -q --no-warn-conflicts "autofaiss==2.18.0" "faiss-cpu" "pyarrow>=6.0.1,<16" "fire>=0.4,<0.6" "numpy<2" pandas fsspec tqdm
fi
module=$("$env/bin/python" -c "import importlib.util as u; print(u.find_spec('clip_retrieval').submodule_search_locations[0])")
rm -rf "$index"
"$env/bin/python" "$module/clip_index.py" "$embeddings" "$index" 2>&1 | tail -n 3
"$env/bin/python" "$(dirname "$0")/check_index.py" "$embeddings" "$index"
echo "index written to $index"
