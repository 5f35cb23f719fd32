"""The ``recipes`` command: ``maskrcnn recipes`` lists the named training recipes,
``maskrcnn recipes NAME`` prints one in full (a file ``maskrcnn train --config`` reads).
"""

from __future__ import annotations

import argparse
from typing import Any

from maskrcnn.train.config_file import to_yaml
from maskrcnn.train.recipes import RECIPES, recipe


def recipe_text(name: str) -> str:
    """The recipe as YAML (the settings it fixes), then, commented, the whole model
    configuration it builds, so that nothing is hidden."""
    r = recipe(name)
    model = r.model.model_config().to_dict()
    model.pop("num_classes", None)
    model.pop("category_names", None)
    lines = [
        f"# recipe {r.name}: {r.summary}",
        f"# use: maskrcnn train --recipe {r.name} --data DIR --out RUN_DIR [options]",
        "# (this text is also a --config file; options and --set/--train-set go on top)",
        to_yaml(r.to_dict()).rstrip(),
        f"# the model it builds: preset {r.model.preset} with the overrides above (num_classes "
        "and category_names come from the data)",
    ]
    dumped = to_yaml(model).rstrip()
    lines += [f"#   {line}" for line in dumped.splitlines()]
    return "\n".join(lines) + "\n"


def _cmd_recipes(args: argparse.Namespace) -> int:
    if args.name is None:
        width = max(map(len, RECIPES))
        for name, r in RECIPES.items():
            print(f"{name:<{width}}  {r.summary}")
        print("\nmaskrcnn recipes NAME prints one in full; maskrcnn train --recipe NAME uses it")
        return 0
    print(recipe_text(args.name), end="")
    return 0


def add_recipes_command(subparsers: Any) -> None:
    """Adds ``recipes`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "recipes", help="list the named training recipes, or print one in full"
    )
    p.add_argument("name", nargs="?", choices=list(RECIPES), help="the recipe to print")
    p.set_defaults(func=_cmd_recipes)
