"""Input pipelines: data sources and the tf.data train and evaluation streams."""
