//! cacd's model artifacts, their manifest, and the inference engines that run them.
