"""Files: the native HDF5 layout and the CaloChallenge, CaloGAN and LHCb interchange formats."""
