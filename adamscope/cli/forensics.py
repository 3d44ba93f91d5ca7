"""`adamscope gradients`, `diff` and `moved-first`: two or more checkpoints together."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adamscope.cli.common import (
    ModelOpt,
    TrustOpt,
    _reader_options,
    command,
)

CkptArg = Annotated[Path, typer.Argument(help="A checkpoint file or folder.")]


@command()
def gradients(
    a: CkptArg,
    b: CkptArg,
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for gradients.parquet.")] = Path(
        "adamscope-out"
    ),
    loss_gradient: Annotated[
        bool,
        typer.Option(
            help="With coupled weight decay (Adam, not AdamW): subtract wd * theta to get the loss gradient."
        ),
    ] = False,
    assume_consecutive: Annotated[
        bool, typer.Option(help="Use the one-step formulas whatever the stored steps say.")
    ] = False,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Exact gradient of B's step from two checkpoints one step apart: grad_norm, update-gradient cosine,
    and a consistency check that tells whether the pair really is consecutive and unmodified."""

    import polars as pl

    from adamscope.cli.present import print_frame
    from adamscope.forensics import GradientOptions, write_gradients

    opts = GradientOptions(
        reader=_reader_options(model, trust_pickle),
        loss_gradient=loss_gradient,
        assume_consecutive=assume_consecutive,
    )
    path = write_gradients(a, b, out, options=opts)
    df = pl.read_parquet(path).filter(pl.col("level") == "layer")
    print_frame(
        df.select(
            "step", "layer", "exact", "grad_norm", "grad_rms", "update_grad_cos", "consistent"
        )
    )
    bad = df.filter(~pl.col("consistent"))["layer"].to_list()
    if bad:
        typer.echo(
            f"warning: the pair fails the consistency check in {', '.join(bad)}: not consecutive, "
            "or the state was modified between the two saves",
            err=True,
        )
    typer.echo(f"-> {path}")


@command()
def diff(
    a: CkptArg,
    b: CkptArg,
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Also write diff.parquet into this folder.")
    ] = None,
    stages: Annotated[
        bool, typer.Option(help="Each layer's stage in A and B (one more pass each).")
    ] = True,
    weights: Annotated[
        bool, typer.Option(help="Compare the model weights when the checkpoints hold them.")
    ] = True,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Per layer: the relative change of m, v, u, r and the weights from A to B, and the stage in each."""

    from adamscope.cli.present import print_frame
    from adamscope.forensics import DiffOptions
    from adamscope.forensics import diff as run_diff

    df = run_diff(
        a,
        b,
        options=DiffOptions(
            reader=_reader_options(model, trust_pickle), stages=stages, weights=weights
        ),
    )
    print_frame(df.drop("checkpoint_a", "checkpoint_b"))
    if out is not None:
        from adamscope.tables.io import write_parquet

        write_parquet(df, out / "diff.parquet")
        typer.echo(f"-> {out / 'diff.parquet'}")


@command("moved-first")
def moved_first(
    run: Annotated[
        Path, typer.Argument(help="A run folder of checkpoints (saved at regular intervals).")
    ],
    k: Annotated[
        float, typer.Option(help="A layer moves when its change exceeds k x its own median change.")
    ] = 3.0,
    quantity: Annotated[str, typer.Option(help="m, v, u, r or weight.")] = "v",
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Also write moved_first.parquet here.")
    ] = None,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Rank layers by when their change first jumped: which layer moved first around a spike."""

    from adamscope.cli.present import print_frame
    from adamscope.forensics import DiffOptions
    from adamscope.forensics import moved_first as run_moved_first

    df = run_moved_first(
        run,
        k=k,
        quantity=quantity,
        options=DiffOptions(reader=_reader_options(model, trust_pickle)),
    )
    print_frame(df)
    if out is not None:
        from adamscope.tables.io import write_parquet

        write_parquet(df, out / "moved_first.parquet")
