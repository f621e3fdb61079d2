"""Evaluation harness: reproduces the paper's Fig. 3-6 on the emulated testbed (`tools/testbed`).

    python -m tools.eval all [--quick]         # export, testbed up, collect, analyse, figures, report, testbed down

Data flows one way; every stage writes plain JSON/CSV that the next one reads:

    config      the model set and timing policies of a full or quick run (EvalConfig)
    harness     testbed + server lifecycle on the host, and the phases below as worker processes per device
    worker      the entry point spawned INSIDE a device's namespace and cgroup (`python -m tools.eval.worker`)
    throttle    moves a worker in and out of its class cgroup, so only timed work runs at the emulated speed
    device_gt   on the device: every block of every model profiled (the ground-truth matrix)
    device_run  on the device: report a p-sample, network profile, plan, execute every plan, time the uploads
    groundtruth the ground-truth matrix as tools/cf_eval long-format CSVs (latency, energy) + block metadata
    metrics     pure numbers: speedup, energy gain, percentage errors, RMSE
    accuracy    Fig. 4: CF (cf_cpp) vs Neurosurgeon's regression on the ground truth with entries hidden
    missing     what a run did not measure (a failed device or model, the cloud profiler not done): exit status, report
    analysis    raw worker outputs -> eval.json (every number of the figures and tables)
    figures     eval.json -> fig3..fig6 PNGs
    report      eval.json -> docs/results/README.md

Speed is EMULATED (cgroup CPU quota of one host CPU per device class) and energy is MODELLED (declared watts x
measured time, `tools/testbed/classes.json`); every output says so.
"""
