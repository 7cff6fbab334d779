"""The recipes' stages 5-7 as library functions (`spkcausal stage score|tde|identify`): one process per stage
that loops over the run plan (spkcausal.experiments.plan) and calls the library in-process, instead of a bash
loop that starts `spkcausal` dozens of times.

- context: StageContext (the dirs, lists and options of a stage) and the stage markers `E/.done/<stage>`;
- steps: one step per former command (score, asnorm-top, calibrate, qmf, record-scores, set-threshold, tde-alpha,
  identify), each printing what the command printed; the CLI commands reuse them;
- score, tde, identify: stages 5, 6 and 7.

A control run of the long-tail protocol (plan field `control`) trains and scores on the balanced control dir,
while its shot groups stay those of the long-tailed training dir, so that "Few" means the same speakers.
"""
