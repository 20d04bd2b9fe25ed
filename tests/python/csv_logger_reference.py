"""Replays a list of logger calls on Python Lightning's CSVLogger (the expectation for
tests/unit/loggers_test.cpp).

    python csv_logger_reference.py OPS_FILE ROOT_DIR     replay OPS_FILE, writing under ROOT_DIR
    python csv_logger_reference.py --version ROOT NAME   print the version Fabric's CSVLogger
                                                         and TensorBoardLogger would pick

OPS_FILE has one tab-separated call per line:
    init      NAME  VERSION|-  PREFIX  FLUSH_EVERY  fabric|pytorch
    log       STEP|-  KEY  VALUE  KEY  VALUE ...     (VALUE: a Python float literal)
    hparams   KEY  b|i|f|s  VALUE  ...
    save
    finalize
"""

import sys


def _value(kind, text):
    return {"b": lambda t: t == "true", "i": int, "f": float, "s": str}[kind](text)


def replay(ops_file, root_dir):
    logger = None
    with open(ops_file, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    for line in lines:
        op, *args = line.split("\t")
        if op == "init":
            name, version, prefix, flush, flavour = args
            version = None if version == "-" else (int(version) if version.isdigit() else version)
            if flavour == "pytorch":
                from lightning.pytorch.loggers import CSVLogger

                logger = CSVLogger(root_dir, name=name, version=version, prefix=prefix,
                                   flush_logs_every_n_steps=int(flush))
            else:
                from lightning.fabric.loggers import CSVLogger

                logger = CSVLogger(root_dir, name=name, version=version, prefix=prefix,
                                   flush_logs_every_n_steps=int(flush))
        elif op == "log":
            step = None if args[0] == "-" else int(args[0])
            pairs = args[1:]
            metrics = {pairs[i]: float(pairs[i + 1]) for i in range(0, len(pairs), 2)}
            logger.log_metrics(metrics, step)
        elif op == "hparams":
            params = {args[i]: _value(args[i + 1], args[i + 2]) for i in range(0, len(args), 3)}
            logger.log_hyperparams(params)
        elif op == "save":
            logger.save()
        elif op == "finalize":
            logger.finalize("success")
        else:
            raise SystemExit(f"unknown op {op!r}")
    print(logger.log_dir)


def versions(root, name):
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    print(CSVLogger(root, name=name).version)
    print(TensorBoardLogger(root, name=name).version)


if __name__ == "__main__":
    if sys.argv[1] == "--version":
        versions(sys.argv[2], sys.argv[3])
    else:
        replay(sys.argv[1], sys.argv[2])
