"""Reference data: data sets, file formats, GFN2-xTB sampling and the showcase molecule builders.

Light imports only (numpy); ASE, tblite and RDKit are imported when used.
"""

from so3krates_openmm.data.dataset import DataError, Frame, MolecularDataset
from so3krates_openmm.data.formats import load_ase, load_dataset, load_npz, save_extxyz, save_npz

__all__ = [
    "DataError",
    "Frame",
    "MolecularDataset",
    "load_ase",
    "load_dataset",
    "load_npz",
    "save_extxyz",
    "save_npz",
]
