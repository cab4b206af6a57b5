"""Datasets: synthetic stamp scenes (`data build`: debian, stamps, backgrounds, pack, scenes, splits, build) and
photo folders (imagefolder), opened for training by one auto-detecting `source.open_data`."""
