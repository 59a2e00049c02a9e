"""steerzoo's command line: ``python train.py {fit,validate,test,predict} --config configs/<method>.yaml``.

Everything the CLI adds to LightningCLI lives in ``lightning_modules/cli.py`` (scripts import it from there).
"""

from lightning_modules.cli import main

if __name__ == "__main__":
    main()
