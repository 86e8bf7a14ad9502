// Runs one target in a worker thread for `npm run fuzz`, so that the main thread can see a case
// that never returns (a synchronous loop cannot be interrupted from inside) and stop it. The
// heartbeat is a shared counter: bumped after every batch, with the batch number and the index of
// the case in progress beside it.

import { parentPort, workerData } from 'node:worker_threads';
import { runTarget } from './harness.js';
import { TARGETS } from './targets/index.js';

interface Job {
  target: string;
  cases: number;
  seed: number;
  batch: number;
  heartbeat: SharedArrayBuffer;
}

const job = workerData as Job;
const beat = new Int32Array(job.heartbeat);
const target = TARGETS.find((t) => t.name === job.target);
if (!target) throw new Error(`no target ${job.target}`);
const result = await runTarget(target, {
  cases: job.cases,
  seed: job.seed,
  batch: job.batch,
  onCase: (index) => Atomics.store(beat, 3, index),
  onProgress: (done, cur) => {
    Atomics.store(beat, 0, done);
    Atomics.store(beat, 1, cur.batch);
    Atomics.add(beat, 2, 1);
  },
});
parentPort!.postMessage(result);
