"""Segment's rules as pure functions: validating messages, naming, flattening messages
into rows, type inference and evolution, retyping, the latest traits of profiles,
selective sync and tracking plans (those two also read their own hand-edited YAML file).
Each rule lives in exactly one of these modules."""
