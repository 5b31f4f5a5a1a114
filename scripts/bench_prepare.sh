#!/usr/bin/env bash
# before/after fps of `ablate data prepare` on one 1080p clip (32 sampled frames)
set -e
clip=/tmp/pb/clip.mp4
mkdir -p /tmp/pb
root=$(cd "$(dirname "$0")/.." && pwd); PY=$root/.venv/bin/python; old=${OLD:?set OLD to a worktree of the commit before (git worktree add /tmp/old 6532698)}
if [ ! -f $clip ]; then
$PY - <<'P'
from pathlib import Path
import av, numpy as np, skimage.data as d, cv2
face = cv2.resize(d.astronaut(), (1200, 1200))
W, H, fps = 1920, 1080, 30
with av.open("/tmp/pb/clip.mp4", "w") as out:
    s = out.add_stream("libx264", rate=fps); s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    s.options = {"preset": "veryfast", "crf": "23"}  # x264 defaults: keyint 250, B-frames
    for i in range(20 * fps):
        img = np.zeros((H, W, 3), np.uint8); img[:] = (40, 60, 80)
        x = 200 + (i * 2) % 500
        img[0:1080, x:x+1080] = face[60:1140, 60:1140]
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")): out.mux(p)
    for p in s.encode(): out.mux(p)
P
fi
for side in old new; do
  rm -rf /tmp/pb/out_$side
  if [ $side = old ]; then dir=$old; else dir=$root; fi
  start=$(date +%s.%N)
  (cd $dir && PYTHONPATH=$dir $PY -c "import sys; from ablate.cli import main; sys.argv[0]='ablate'; main()" data prepare --videos $clip --out /tmp/pb/out_$side --frames 32 --quiet ${EXTRA:-}) > /tmp/pb/$side.log 2>&1 || { cat /tmp/pb/$side.log; exit 1; }
  end=$(date +%s.%N)
  n=$(ls /tmp/pb/out_$side/clip/*.png | wc -l)
  echo "$side: $n crops in $(echo "$end - $start" | bc) s"
done
