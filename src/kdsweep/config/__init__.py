"""The configuration: the structured schema Hydra checks types against, the choice
Enums, the checks a composed config must pass before anything runs, and where
``conf/`` lives."""
