#!/usr/bin/env bash
# Prepare the GPU check on a machine with network access: build .gpu_bundle/ (git-ignored) for benchmarks/gpu_check.sh,
# check that it travels (working tree + .gpu_bundle <= 64 MiB), and print the carry list and the command to run there.
#
#     bash benchmarks/gpu_bundle.sh            # PYTHON=/path/to/python if python3 has no pip
#
# .gpu_bundle/ holds:
#   wheels/  `pip download --no-deps` of the pinned versions of what the GPU machine lacks (monai, nibabel, pydicom,
#            pytorch-ignite, fire) and their small pure-Python dependencies (termcolor; packaging and
#            typing_extensions as fallbacks, unpacked only if the machine lacks them), as wheels for Python 3.12.
#            SimpleITK stays here: its wheel alone is ~53 MB, too much for the 64 MiB with the rest, and the package
#            imports it only to decode DICOM series, which no CUDA path needs.
#   data/    a few real files of ../shared/data (the TotalSegmentator example CTs for the abdomen bundle, one MedSeg
#            slice and mask for the copy-generator test), with their SOURCE.md / LICENSE.
#   commit.txt  the commit (and whether the tree had changes) the check runs on.
# Downloaded wheels are kept between runs (pip skips files already there).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
DEST=.gpu_bundle
DATA_SOURCE="${MONAI_ADVSEG_DATA:-$(cd .. && pwd)/shared/data}"
# The versions this project is tested with on the CPU machines (torch, numpy, ... come with the GPU machine).
PINS=(monai==1.6.1 nibabel==5.4.2 pydicom==3.0.2 pytorch-ignite==0.5.5 fire==0.7.1 termcolor==3.3.0
    packaging==26.4 typing_extensions==4.16.0)

mkdir -p "$DEST"
git check-ignore -q "$DEST" || {
    echo "gpu_bundle: $DEST is not git-ignored; it must not be committed" >&2
    exit 1
}
rm -rf "$DEST/site" "$DEST/data" # site/ is unpacked on the GPU machine; data/ is copied afresh below
mkdir -p "$DEST/wheels" "$DEST/data"

# pure-Python wheels for CPython 3.12 (the GPU machine's python3); --only-binary because --python-version needs it
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d "$DEST/wheels" "${PINS[@]}"
# keep only the pinned files (an earlier run with other pins may have left others)
for wheel in "$DEST"/wheels/*.whl; do
    keep=no
    for pin in "${PINS[@]}"; do
        name="${pin%%==*}"
        name="${name//-/_}"
        case "$(basename "$wheel" | tr '[:upper:]' '[:lower:]')" in
        "$(echo "$name" | tr '[:upper:]' '[:lower:]')-${pin##*==}-"*) keep=yes ;;
        esac
    done
    [ "$keep" = yes ] || rm -f "$wheel"
done

# copy_data DATASET FILE...: real files into data/DATASET (relative paths kept), with the data set's licence notes
copy_data() {
    local dataset="$1"
    shift
    for file in "$@" SOURCE.md LICENSE; do
        if [ -e "$DATA_SOURCE/$dataset/$file" ]; then
            mkdir -p "$(dirname "$DEST/data/$dataset/$file")"
            cp -r "$DATA_SOURCE/$dataset/$file" "$DEST/data/$dataset/$file"
        elif [ "$file" != LICENSE ]; then
            echo "gpu_bundle: $DATA_SOURCE/$dataset/$file not found (set MONAI_ADVSEG_DATA)" >&2
            exit 1
        fi
    done
    chmod -R u+w "$DEST/data/$dataset" # the shared copy is read-only; the next run must be able to remove it
}
# the abdomen bundle sweep and tests/bundles/test_abdomen_ct_segmentation.py (whose data fixture links the series)
copy_data ct_totalseg_example nifti/example_ct.nii.gz nifti/example_seg_fast_force_split.nii.gz \
    nifti/example_ct_sm.nii.gz nifti/example_seg.nii.gz dicom dicom_labels
# tests/engines/test_adversarial_copies.py
copy_data ct_covid_medseg_infnet train/images/3.jpg train/masks/3.png

{
    git rev-parse HEAD
    [ -z "$(git status --porcelain)" ] || echo "(with uncommitted changes)"
} >"$DEST/commit.txt"

echo "gpu_bundle: built $DEST:"
du -sh "$DEST/wheels" "$DEST/data" | sed 's/^/    /'
"$PYTHON" benchmarks/gpu_check.py carried-size "$DEST" || {
    echo "gpu_bundle: too big to carry; drop something" >&2
    exit 1
}
cat <<EOF
On the GPU machine, from the repository root (the device tool's run):
    carry:   ["$DEST"]
    command: bash benchmarks/gpu_check.sh
    timeout_s: 600  (the script keeps within GPU_CHECK_BUDGET_S=540 and writes \$OUT/gpu_check.json)
EOF
