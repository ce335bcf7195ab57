"""One sync end to end: batches of archive files (pipeline) or pages of cloud objects
(object_pipeline) through the rules and encoders into a warehouse, and the reports,
catalog and project file (sluice.yml) around them."""
