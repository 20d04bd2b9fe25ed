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
    python tensorboard_reference.py summary OPS_FILE LOG_DIR
        Replays SummaryWriter calls on torch.utils.tensorboard.SummaryWriter(LOG_DIR); OPS_FILE
        lines (tab-separated; STEP may be -; VALUES as Python float literals; TEXT in hex):
            scalar     TAG  STEP  VALUE
            scalars    MAIN_TAG  STEP  TAG VALUE ...
            histogram  TAG  STEP  DTYPE  SHAPE(comma-separated)  VALUES ...
            image      TAG  STEP  DTYPE  DATAFORMATS  SHAPE  VALUES ...
            text       TAG  STEP  HEX
    python tensorboard_reference.py dump_all LOG_DIR
        Reads every run below LOG_DIR (each folder holding event files) with EventAccumulator and
        prints, sorted, one fact a line: RUN then scalar/histogram/image/text facts (histogram
        sums to 9 significant digits; images as the decoded pixels' sha256 and PIL mode).
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


def summary(ops_file, log_dir):
    import torch
    from torch.utils.tensorboard import SummaryWriter

    dtypes = {"float32": torch.float32, "float64": torch.float64, "uint8": torch.uint8,
              "int64": torch.int64}
    writer = SummaryWriter(log_dir)
    with open(ops_file, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    for line in lines:
        op, tag, step, *args = line.split("\t")
        step = None if step == "-" else int(step)
        if op == "scalar":
            writer.add_scalar(tag, float(args[0]), step)
        elif op == "scalars":
            writer.add_scalars(tag, {args[i]: float(args[i + 1]) for i in range(0, len(args), 2)}, step)
        elif op in ("histogram", "image"):
            dtype = dtypes[args[0]]
            if op == "image":
                dataformats, args = args[1], args[1:]
            shape = [int(n) for n in args[1].split(",")]
            values = [float(v) for v in args[2:]]
            tensor = torch.tensor(values, dtype=torch.float64).to(dtype).reshape(shape)
            if op == "histogram":
                writer.add_histogram(tag, tensor, step)
            else:
                writer.add_image(tag, tensor, step, dataformats=dataformats)
        elif op == "text":
            writer.add_text(tag, bytes.fromhex(args[0]).decode("utf-8"), step)
        else:
            raise SystemExit(f"unknown op {op!r}")
    writer.close()


def dump_all(log_dir):
    import hashlib
    import io
    import os

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    out = []
    for folder, _, files in os.walk(log_dir):
        if not any(name.startswith("events.out.tfevents.") for name in files):
            continue
        run = os.path.relpath(folder, log_dir)
        acc = EventAccumulator(folder, size_guidance={"scalars": 0, "histograms": 0, "images": 0,
                                                      "tensors": 0})
        acc.Reload()
        out.append(f"{run}\tfile_version\t{acc.file_version}")
        tags = acc.Tags()
        for tag in tags["scalars"]:
            for e in acc.Scalars(tag):
                out.append(f"{run}\tscalar\t{tag}\t{e.step}\t{e.value!r}")
        for tag in tags["histograms"]:
            for e in acc.Histograms(tag):
                h = e.histogram_value
                out.append(f"{run}\thistogram\t{tag}\t{e.step}\tmin={h.min!r} max={h.max!r} "
                           f"num={h.num!r} sum={h.sum:.9g} sum_squares={h.sum_squares:.9g}")
                out.append(f"{run}\thistogram_limits\t{tag}\t{e.step}\t{list(h.bucket_limit)!r}")
                out.append(f"{run}\thistogram_counts\t{tag}\t{e.step}\t{list(h.bucket)!r}")
        for tag in tags["images"]:
            for e in acc.Images(tag):
                image = Image.open(io.BytesIO(e.encoded_image_string))
                image.load()
                digest = hashlib.sha256(image.tobytes()).hexdigest()[:16]
                out.append(f"{run}\timage\t{tag}\t{e.step}\t{e.width}x{e.height} "
                           f"mode={image.mode} size={image.size} pixels={digest}")
        for tag in tags["tensors"]:
            for e in acc.Tensors(tag):
                value = tensor_util.make_ndarray(e.tensor_proto)
                texts = [v.decode("utf-8") for v in value.reshape(-1)]
                out.append(f"{run}\ttensor\t{tag}\t{e.step}\tshape={list(value.shape)} {texts!r}")
        for plugin in ("text",):
            try:
                contents = acc.PluginTagToContent(plugin)
            except KeyError:  # no event of that plugin in this run
                contents = {}
            for tag, content in contents.items():
                out.append(f"{run}\tplugin\t{plugin}\t{tag}\t{content!r}")
    for line in sorted(out):
        print(line)


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(sys.argv[2])
    elif sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "summary":
        summary(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "dump_all":
        dump_all(sys.argv[2])
    else:
        raise SystemExit(__doc__)
