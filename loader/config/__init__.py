"""Configuration, the bottom of the flow: the warehouse targets of profiles.yml and the
machinery every hand-edited YAML file shares (locations, secrets, close-name hints)."""
