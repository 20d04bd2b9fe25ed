"""TensorBoard side of tests/unit/loggers_test.cpp.

    python tensorboard_reference.py dump LOG_DIR
        Reads LOG_DIR with tensorboard's EventAccumulator and prints what it found, one fact a
        line (tab-separated), sorted:
            file_version  VERSION
            scalar        TAG  STEP  VALUE          (VALUE as Python's repr of the float)
            hparam        KEY  number|string|bool  VALUE
            hparam_info   NAME  TYPE
            metric_info   TAG
            session_end   STATUS
    python tensorboard_reference.py write OPS_FILE ROOT_DIR
        Replays logger calls on Python Fabric's TensorBoardLogger; OPS_FILE lines (tab-separated):
            init     NAME  VERSION|-  PREFIX  SUB_DIR|-
            log      STEP|-  KEY  VALUE ...
            hparams  STEP|-  DEFAULT|KEY VALUE ...  ;  KEY  b|i|f|s  VALUE ...
            finalize
        and prints the log directory.
"""

import sys


def dump(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    out = [f"file_version\t{acc.file_version}"]
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            out.append(f"scalar\t{tag}\t{event.step}\t{event.value!r}")
    for tag, content in acc.PluginTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        which = data.WhichOneof("data")
        if which == "session_start_info":
            for key, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                text = value.string_value if kind == "string_value" else repr(getattr(value, kind))
                out.append(f"hparam\t{key}\t{kind.replace('_value', '')}\t{text}")
        elif which == "experiment":
            for info in data.experiment.hparam_infos:
                out.append(f"hparam_info\t{info.name}\t{api_pb2.DataType.Name(info.type)}")
            for info in data.experiment.metric_infos:
                out.append(f"metric_info\t{info.name.tag}")
        elif which == "session_end_info":
            out.append(f"session_end\t{api_pb2.Status.Name(data.session_end_info.status)}")
    for line in sorted(out):
        print(line)


def _value(kind, text):
    return {"b": lambda t: t == "true", "i": int, "f": float, "s": str}[kind](text)


def write(ops_file, root_dir):
    from lightning.fabric.loggers import TensorBoardLogger

    logger = None
    with open(ops_file, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    for line in lines:
        op, *args = line.split("\t")
        if op == "init":
            name, version, prefix, sub_dir = args
            version = None if version == "-" else (int(version) if version.isdigit() else version)
            logger = TensorBoardLogger(root_dir, name=name, version=version, prefix=prefix,
                                       sub_dir=None if sub_dir == "-" else sub_dir)
        elif op == "log":
            step = None if args[0] == "-" else int(args[0])
            pairs = args[1:]
            logger.log_metrics({pairs[i]: float(pairs[i + 1]) for i in range(0, len(pairs), 2)}, step)
        elif op == "hparams":
            step = None if args[0] == "-" else int(args[0])
            split = args.index(";")
            metric_args, param_args = args[1:split], args[split + 1:]
            metrics = None
            if metric_args != ["DEFAULT"]:
                metrics = {metric_args[i]: float(metric_args[i + 1]) for i in range(0, len(metric_args), 2)}
            params = {param_args[i]: _value(param_args[i + 1], param_args[i + 2])
                      for i in range(0, len(param_args), 3)}
            logger.log_hyperparams(params, metrics, step)
        elif op == "finalize":
            logger.finalize("success")
        else:
            raise SystemExit(f"unknown op {op!r}")
    print(logger.log_dir)


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(sys.argv[2])
    elif sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
