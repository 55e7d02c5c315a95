"""Command-line programs, one module per command, each a thin ``main(argv=None) -> int`` over the library.

=================================  ==============================  ==========================================
console script                     module (``python -m ...``)      library
=================================  ==============================  ==========================================
``so3krates-train``                ``so3krates_openmm.cli.train``   :mod:`so3krates_openmm.training`
``so3krates-export``               ``so3krates_openmm.cli.export``  :func:`so3krates_openmm.export.export_checkpoint`
``so3krates-data``                 ``so3krates_openmm.cli.data``    :mod:`so3krates_openmm.data`
``so3krates-eval``                 ``so3krates_openmm.cli.eval``    :mod:`so3krates_openmm.training.evaluation`
``so3krates-md-langevin-nvt``      ``...cli.langevin_nvt``          :mod:`so3krates_openmm.md.recipes`, one
``so3krates-md-nve``               ``...cli.nve``                   function per protocol, options in
``so3krates-md-spectrum``          ``...cli.spectrum``              :mod:`so3krates_openmm.md.protocols`
``so3krates-md-catcher-distance``  ``...cli.catcher_distance``
``so3krates-md-ramachandran``      ``...cli.ramachandran``
``so3krates-md-minima``            ``...cli.minima``
``so3krates-md-mlmm-solvated``     ``...cli.mlmm_solvated``
``so3krates-md-stability-report``  ``...cli.stability_report``      :mod:`so3krates_openmm.md.report`
=================================  ==============================  ==========================================

The MD programs are also the scripts ``md_protocols/<name>.py``.
All parse with jsonargparse: train and the MD protocols from their typed options
(:mod:`so3krates_openmm.options`: flags + a YAML ``--config``/``--protocol`` file), the
flag-only commands (export, eval, data, stability report) with its argparse-compatible parser.

Every program first applies :func:`so3krates_openmm.runtime.configure_process`
(before PyTorch is imported) unless given ``--no-process-tuning``. Exit codes:
0 done, 1 the MD run became unstable, 2 bad input (a one-line ``error:`` message),
3 ``so3krates-data`` stopped early on request (``--stop-after-frames``).
"""
