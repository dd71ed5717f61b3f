#!/usr/bin/env bash
# sd-onnx side by side with stable-diffusion.cpp (issue #19): the same full-size SD 1.5 weights, Euler, CFG 7.5,
# 2 threads, whole-process wall and peak RSS (GNU time), runs alternating, one process per run.
#
#   scripts/bench_vs_sdcpp.sh [SIZES] [STEPS] [RUNS]        (defaults: "256 512", 10, 1)
#
# Needs, besides scripts/setup's build: cmake, a C++17 compiler, git, GNU time, and
#   bench-model/            python scripts/make_bench_model.py                          (ours, optimum layout)
#   bench-model-diffusers/  python scripts/make_bench_model.py --diffusers bench-model-diffusers
#                           (the same seeded weights as a diffusers folder, which sd.cpp loads directly)
#
# stable-diffusion.cpp is built from source at a pinned commit, with its ggml submodule's pinned commit:
#   SDCPP_REPO  a git repository holding SDCPP_COMMIT  (default: a bare clone of
#               https://github.com/leejet/stable-diffusion.cpp made in $WORK)
#   GGML_REPO   one holding GGML_COMMIT                (default: https://github.com/ggml-org/ggml)
# The tree is written with `git cat-file` file by file, so a partial snapshot works too (this project's
# machine has one, from its `fetch` tool, without some large tokenizer tables of models other than SD); those
# tables are then stubbed empty, and an SD 1.x run never reads them. Two builds: sd.cpp's default CPU build
# and the same with GGML_LLAMAFILE=ON (llamafile's sgemm), each run with --type f32 and f16.
# BUILD_ONLY=1 stops after the builds; VARIANTS (below) picks the sd.cpp rows. Results go to docs/PERFORMANCE.md by hand, with the date and both commits.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${1:-"256 512"}
STEPS=${2:-10}
RUNS=${3:-1}
# sd.cpp builds and weight types to run (an sd.cpp run at 512x512 takes 9-14 minutes here: pick fewer there).
VARIANTS=${VARIANTS:-"default:f32 default:f16 llamafile:f32 llamafile:f16"}
SDCPP_COMMIT=97d2990807fe6d558e395f8764198d7c7e7b411c   # 2026-08-19
GGML_COMMIT=8e800cef2948046cc47f9db6090491c6128ca42c    # its ggml submodule
WORK=${SDCPP_WORK:-target/sdcpp}
mkdir -p "$WORK"

export_tree() { # git_dir commit dest: write every readable file of the commit; print the unreadable ones
  local git_dir=$1 commit=$2 dest=$3
  mkdir -p "$dest"
  git --git-dir="$git_dir" ls-tree -r "$commit" | while read -r mode type sha path; do
    [ "$type" = blob ] || continue
    mkdir -p "$dest/$(dirname "$path")"
    if ! git --git-dir="$git_dir" cat-file blob "$sha" > "$dest/$path" 2>/dev/null; then
      rm -f "$dest/$path"
      echo "$path"
    fi
  done
}

src=$WORK/src
if [ ! -f "$src/CMakeLists.txt" ]; then
  repo=${SDCPP_REPO:-$WORK/sdcpp.git}
  [ -d "$repo" ] || git clone --bare https://github.com/leejet/stable-diffusion.cpp "$repo"
  ggml=${GGML_REPO:-$WORK/ggml.git}
  [ -d "$ggml" ] || git clone --bare https://github.com/ggml-org/ggml "$ggml"
  missing=$(export_tree "$repo" "$SDCPP_COMMIT" "$src")
  export_tree "$ggml" "$GGML_COMMIT" "$src/ggml" > "$WORK/ggml-missing.txt"
  [ -s "$WORK/ggml-missing.txt" ] && { echo "ggml files missing:"; cat "$WORK/ggml-missing.txt"; exit 1; }
  # Stub the tokenizer tables a partial snapshot lacks: every array vocab.cpp names that no header defines.
  vocab=$src/src/tokenizers/vocab
  for f in $missing; do
    case $f in
      src/tokenizers/vocab/*.hpp) : > "$src/$f" ;;
      assets/*) ;;
      *) echo "sd.cpp source file missing: $f" >&2; exit 1 ;;
    esac
  done
  if [ -n "$missing" ]; then
    first=$(echo "$missing" | grep '^src/tokenizers/vocab/' | head -1)
    for name in $(grep -o 'reinterpret_cast<const char\*>([a-z0-9_]*)' "$vocab/vocab.cpp" | sed 's/.*(\(.*\))/\1/' | sort -u); do
      grep -q "$name\[\]" "$vocab"/*.hpp || echo "static const unsigned char $name[] = {0};" >> "$src/$first"
    done
  fi
fi

build() { # dir extra-cmake-flags...
  local dir=$1; shift
  [ -x "$dir/bin/sd-cli" ] && return
  cmake -S "$src" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DSD_WEBP=OFF -DSD_WEBM=OFF "$@" > "$dir.cmake.log"
  cmake --build "$dir" --target sd-cli -j "$(nproc)" > "$dir.build.log"
}
build "$WORK/build-default"
build "$WORK/build-llamafile" -DGGML_LLAMAFILE=ON
[ -n "${BUILD_ONLY:-}" ] && { echo "built: $WORK/build-*/bin/sd-cli"; exit 0; }

export ORT_DYLIB_PATH=$(cat target/ort-lib-path)
export SD_ONNX_CACHE=${SD_ONNX_CACHE:-$PWD/target/bench-cache}
ours=target/release/sd-onnx
# Warm our graph cache first (a first start optimises the graphs; sd.cpp has no such step to warm).
$ours txt2img --model bench-model -p x --steps 1 -W 256 -H 256 --guidance 1 -o "$WORK/warm.png" --overwrite --quiet

measure() { # label command...: "label<TAB>wall s<TAB>peak MiB"
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time.txt" "$@" > "$WORK/run.log" 2>&1 || { echo "$label failed:"; tail -5 "$WORK/run.log"; return 1; }
  read -r wall kb < "$WORK/time.txt"
  printf '%s\t%s\t%s\n' "$label" "$wall" "$((kb / 1024))"
}

results=$WORK/results.tsv
: > "$results"
for size in $SIZES; do
  for run in $(seq "$RUNS"); do
    common=(-p "a red apple" --steps "$STEPS" -W "$size" -H "$size")
    measure "$size sd-onnx fp32" $ours txt2img --model bench-model "${common[@]}" --scheduler euler --guidance 7.5 \
      --seed 1 --threads 2 -o "$WORK/ours-$size.png" --overwrite --quiet >> "$results"
    for v in $VARIANTS; do
      b=${v%:*} t=${v#*:}
      measure "$size sd.cpp $t ($b)" "$WORK/build-$b/bin/sd-cli" -m bench-model-diffusers "${common[@]}" \
        --sampling-method euler --cfg-scale 7.5 -s 1 -t 2 --type "$t" -o "$WORK/sdcpp-$b-$t-$size.png" >> "$results"
    done
    if [ -d bench-model-int8 ]; then
      measure "$size sd-onnx int8" $ours txt2img --model bench-model-int8 "${common[@]}" --scheduler euler \
        --guidance 7.5 --seed 1 --threads 2 -o "$WORK/ours-int8-$size.png" --overwrite --quiet >> "$results"
    fi
  done
done

# The table: medians per row, ratios against sd-onnx fp32 of the same size.
python3 - "$results" "$STEPS" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, wall, mib = line.rstrip("\n").split("\t")
    rows.setdefault(label, []).append((float(wall), int(mib)))
steps = int(sys.argv[2])
print(f"| run ({steps} steps) | wall | s/step (whole run / steps) | peak RSS |")
print("|---|---|---|---|")
for label, v in rows.items():
    size = label.split()[0]
    base = rows.get(f"{size} sd-onnx fp32")
    wall = statistics.median(w for w, _ in v)
    mib = statistics.median(m for _, m in v)
    bw = statistics.median(w for w, _ in base) if base else wall
    bm = statistics.median(m for _, m in base) if base else mib
    print(f"| {label} | {wall:.1f} s ({wall / bw:.2f}x) | {wall / steps:.2f} | {mib:.0f} MiB ({mib / bm:.2f}x) |")
EOF
