#!/usr/bin/env python3
"""Writes the fuzz harness's seed files: small, valid, entirely synthetic
DICOM files (no patient data), one per encoding the parsers must handle.

    pip install pydicom numpy pillow
    python3 plugins/fuzz/seeds/make_seeds.py   # rewrites plugins/fuzz/seeds/*.dcm

Deterministic: the same bytes on every run (fixed UIDs, dates, pixels).
"""
import io
import os

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT_UID = "1.2.826.0.1.3680043.10.1234."  # example root; synthetic ids only
INTRA_ORAL = "1.2.840.10008.5.1.4.1.1.1.3"
DX = "1.2.840.10008.5.1.4.1.1.1"
SECONDARY = "1.2.840.10008.5.1.4.1.1.7"


def uid(n):
    return ROOT_UID + str(n)


def code(value, scheme, meaning, nested=None):
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    if nested is not None:
        item.ModifierCodeSequence = Sequence(nested)
    return item


def base(n, ts, sop_class=INTRA_ORAL, modality="IO"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid(1000 + n)
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = uid(1)
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(1000 + n)
    ds.StudyInstanceUID = uid(2000 + n)
    ds.SeriesInstanceUID = uid(3000 + n)
    ds.PatientName = "FUZZ^SEED"
    ds.PatientID = "FUZZ-%04d" % n
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AcquisitionDate = "20240102"
    ds.Modality = modality
    ds.Manufacturer = "ferry fuzz seeds"
    ds.ManufacturerModelName = "synthetic"
    ds.ImageComments = "synthetic seed %d" % n
    return ds


def gradient(rows, cols, bits, signed=False):
    y, x = np.mgrid[0:rows, 0:cols]
    top = (1 << bits) - 1
    img = ((x * 7 + y * 13) % (top + 1)).astype(np.int64)
    img[rows // 3 : rows // 2, cols // 4 : cols // 2] = top  # a bright "tooth"
    if signed:
        img -= (top + 1) // 2
    return img


def mono(ds, pixels, bits_stored, allocated, photometric="MONOCHROME2", signed=False, frames=1):
    rows, cols = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    dtype = {8: np.uint8, 16: np.uint16}[allocated]
    if signed:
        dtype = {8: np.int8, 16: np.int16}[allocated]
    return pixels.astype(dtype)


def rgb_pixels(rows, cols):
    y, x = np.mgrid[0:rows, 0:cols]
    return np.stack([(x * 5) % 256, (y * 9) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)


def rgb(ds, rows, cols, planar=0):
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = planar
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def save(ds, name, pixel_bytes=None):
    if pixel_bytes is not None:
        ds.PixelData = pixel_bytes
    path = os.path.join(HERE, name)
    ds.save_as(path, enforce_file_format=True)
    print("%-40s %6d bytes  %s" % (name, os.path.getsize(path), ds.file_meta.TransferSyntaxUID.name))


def jpeg(pixels, mode, **kw):
    out = io.BytesIO()
    Image.fromarray(pixels, mode=None).convert(mode).save(out, format="JPEG", quality=90, **kw)
    return out.getvalue()


def main():
    # 1. Explicit VR LE, 16-bit (12 stored), nested sequences three deep,
    #    windowing and rescale attributes, many VRs.
    ds = base(1, ExplicitVRLittleEndian)
    px = mono(ds, gradient(40, 48, 12), 12, 16)
    ds.AnatomicRegionSequence = Sequence(
        [code("T-11170", "SRT", "Maxilla", [code("G-A101", "SRT", "Left", [code("16", "ISO3950", "Tooth 16")])])]
    )
    ds.PrimaryAnatomicStructureSequence = Sequence([code("16", "ISO3950", "Tooth 16"), code("17", "ISO3950", "Tooth 17")])
    ds.ReferencedImageSequence = Sequence([])  # an empty sequence
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.PixelSpacing = [0.1, 0.1]
    ds.KVP = "60"
    ds.ImageLaterality = "L"
    ds.add_new(0x00181164, "DS", [0.02, 0.02])  # ImagerPixelSpacing
    ds.add_new(0x00091010, "LO", "private tag")
    ds.add_new(0x00091011, "UN", b"\x01\x02\x03\x04")
    ds.add_new(0x00280034, "IS", [1, 1])  # PixelAspectRatio
    save(ds, "explicit_le_16bit_nested_sq.dcm", px.tobytes())

    # 2. Implicit VR LE, 8-bit MONOCHROME2, a sequence too.
    ds = base(2, ImplicitVRLittleEndian, DX, "PX")
    px = mono(ds, gradient(36, 52, 8), 8, 8)
    ds.AnatomicRegionSequence = Sequence([code("T-D1000", "SRT", "Jaw", [code("G-A100", "SRT", "Right")])])
    save(ds, "implicit_le_8bit.dcm", px.tobytes())

    # 3. Explicit VR big endian, 16-bit.
    ds = base(3, ExplicitVRBigEndian)
    px = mono(ds, gradient(32, 40, 16), 16, 16)
    ds.AnatomicRegionSequence = Sequence([code("T-11170", "SRT", "Maxilla")])
    save(ds, "explicit_be_16bit.dcm", px.astype(">u2").tobytes())

    # 4. Deflated explicit VR LE, 8-bit.
    ds = base(4, DeflatedExplicitVRLittleEndian)
    px = mono(ds, gradient(48, 48, 8), 8, 8)
    ds.AnatomicRegionSequence = Sequence([code("T-11170", "SRT", "Maxilla")])
    save(ds, "deflated_8bit.dcm", px.tobytes())

    # 5. RLE lossless, 16-bit, two frames.
    ds = base(5, ExplicitVRLittleEndian, DX, "DX")
    frames = np.stack([gradient(24, 32, 12), gradient(24, 32, 12)[::-1]])
    px = mono(ds, frames, 12, 16, frames=2)
    ds.compress(RLELossless, px)
    save(ds, "rle_16bit_2frames.dcm")

    # 6. RLE lossless, RGB.
    ds = base(6, ExplicitVRLittleEndian, SECONDARY, "OT")
    rgb(ds, 24, 30)
    ds.compress(RLELossless, rgb_pixels(24, 30))
    save(ds, "rle_rgb.dcm")

    # 7. JPEG baseline, 8-bit grey, one fragment.
    ds = base(7, JPEGBaseline8Bit)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    px = mono(ds, gradient(40, 40, 8), 8, 8)
    ds.PixelData = encapsulate([jpeg(px, "L")])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    save(ds, "jpeg_baseline_8bit.dcm")

    # 8. JPEG baseline, RGB (YBR_FULL_422), split into three fragments.
    ds = base(8, JPEGBaseline8Bit, SECONDARY, "OT")
    rgb(ds, 32, 32)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([jpeg(rgb_pixels(32, 32), "RGB", subsampling=1)], fragments_per_frame=3)
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    save(ds, "jpeg_baseline_rgb_3fragments.dcm")

    # 9. MONOCHROME1, 16-bit signed, rescale and a VOI LUT function.
    ds = base(9, ExplicitVRLittleEndian, DX, "DX")
    px = mono(ds, gradient(30, 44, 14, signed=True), 14, 16, photometric="MONOCHROME1", signed=True)
    ds.WindowCenter = [0, 100]
    ds.WindowWidth = [8000, 4000]
    ds.VOILUTFunction = "SIGMOID"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "2"
    save(ds, "monochrome1_16bit_signed.dcm", px.tobytes())

    # 10. Native RGB, planar configuration 0 and 1.
    ds = base(10, ExplicitVRLittleEndian, SECONDARY, "OT")
    rgb(ds, 20, 28)
    save(ds, "rgb_8bit.dcm", rgb_pixels(20, 28).tobytes())
    ds = base(11, ExplicitVRLittleEndian, SECONDARY, "OT")
    rgb(ds, 20, 28, planar=1)
    save(ds, "rgb_8bit_planar.dcm", np.moveaxis(rgb_pixels(20, 28), -1, 0).tobytes())

    # 11. Native 8-bit, three frames, no preamble-less trickery.
    ds = base(12, ExplicitVRLittleEndian, DX, "PX")
    frames = np.stack([gradient(16, 24, 8)] * 3)
    px = mono(ds, frames, 8, 8, frames=3)
    save(ds, "multiframe_8bit.dcm", px.tobytes())

    # 12. Encapsulated with an empty basic offset table and several frames
    #     (RLE, 8-bit, three frames) and odd sizes.
    ds = base(13, ExplicitVRLittleEndian, DX, "DX")
    frames = np.stack([gradient(17, 23, 8)] * 3)
    px = mono(ds, frames, 8, 8, frames=3)
    ds.compress(RLELossless, px)
    save(ds, "rle_8bit_3frames_odd.dcm")


if __name__ == "__main__":
    main()
