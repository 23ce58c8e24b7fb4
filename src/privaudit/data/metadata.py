"""What an image file's headers carry besides pixels: DICOM elements, PNG text chunks, EXIF, TIFF tags.

:func:`read_headers` lists the privacy-relevant fields of one file by **name and category only**.
Values are never kept: each one is reduced to a keyed digest (HMAC with a key drawn afresh in each
process), so that the ``metadata`` check can tell whether a synthetic file repeats a value of a
training file without holding either value. Field names come from fixed dictionaries (the DICOM
data dictionary, Pillow's EXIF table, the TIFF tag table, the PNG specification's keywords);
user-defined names (a custom PNG keyword, a private DICOM tag) are reported generically, because
a name chosen by whoever wrote the file could itself be a value.

Categories (see the README's metadata section):

* ``name``: person names (DICOM VR PN, EXIF Artist, PNG Author).
* ``id``: patient, study and request identifiers (PatientID, AccessionNumber, ...).
* ``uid``: DICOM instance UIDs (Study/Series/SOP Instance UID, ...). UIDs defined by the standard
  (SOP classes, transfer syntaxes) are technical. Every DICOM file must carry instance UIDs, so
  their presence is not counted as identifying; a UID repeated from training is.
* ``date``: dates and times (DICOM DA/DT/TM, EXIF DateTime*, PNG "Creation Time").
* ``location``: addresses, residence, GPS.
* ``device``: serial numbers and station names of the acquiring device.
* ``free_text``: descriptions, comments, institution names, private tags and custom text chunks:
  anything could be written there.
* ``demographic``: sex, age, size, weight, ethnic group. Listed, not counted as identifying
  (conditional generators legitimately keep them), never matched.

Which DICOM attributes fall in which category follows the Basic Application Level
Confidentiality Profile (DICOM PS3.15, Annex E, table E.1-1), abridged to what reaches a
radiograph; the lists are below.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privaudit.data.readers import DICOM_EXTENSIONS, TIFF_EXTENSIONS, TIFF_MAGIC, _is_dicom, quiet_decoding
from privaudit.errors import MissingDependencyError

#: Categories whose presence makes a file count as carrying identifying metadata.
IDENTIFYING = frozenset({"name", "id", "date", "location", "device", "free_text"})
#: Categories whose values are compared with the training files' values.
MATCHED = frozenset({"name", "id", "uid", "location", "device", "free_text"})

#: Values that de-identification tools write in place of a real one; they identify nobody, so a
#: field holding only these is not counted and never matched. Compared case-insensitively.
DEFAULT_PLACEHOLDERS = (
    "anonymous", "anonymized", "anonymised", "anon", "deidentified", "de-identified",
    "removed", "redacted", "unknown", "none", "null", "n/a", "na", "not available", "xxx",
)

# A fresh key per process: digests can be compared within one audit and are worthless outside it.
_KEY = secrets.token_bytes(32)

# DICOM PS3.15 E.1-1, abridged. Elements of VR PN are names, DA/DT/TM dates, UI UIDs, and LT/ST/UT
# (free text by definition) free text, whatever their keyword; these lists add the LO/SH/CS/...
# attributes that the profile removes or replaces.
_DICOM_ID = frozenset("""
    PatientID OtherPatientIDs IssuerOfPatientID AccessionNumber StudyID MedicalRecordLocator
    AdmissionID ServiceEpisodeID FillerOrderNumberImagingServiceRequest
    PlacerOrderNumberImagingServiceRequest RequestedProcedureID ScheduledProcedureStepID
    PerformedProcedureStepID PatientTelephoneNumbers InsurancePlanIdentification MilitaryRank
    BranchOfService PatientReligiousPreference
""".split())
_DICOM_DEVICE = frozenset("DeviceSerialNumber StationName DetectorID PlateID CassetteID GantryID ScheduledStationName PerformedStationName".split())
_DICOM_LOCATION = frozenset("""
    PatientAddress InstitutionAddress ReferringPhysicianAddress RegionOfResidence CountryOfResidence
    PersonAddress CurrentPatientLocation PatientInstitutionResidence PerformedLocation
""".split())
_DICOM_FREE_TEXT = frozenset("""
    InstitutionName InstitutionalDepartmentName StudyDescription SeriesDescription ProtocolName
    RequestedProcedureDescription PerformedProcedureStepDescription ScheduledProcedureStepDescription
    Occupation MedicalAlerts Allergies ReasonForStudy ReasonForTheRequestedProcedure ContentLabel
    ContentDescription PatientState RequestingService ResponsibleOrganization
""".split())
_DICOM_DEMOGRAPHIC = frozenset("""
    PatientSex PatientAge PatientSize PatientWeight EthnicGroup PatientSexNeutered SmokingStatus
    PregnancyStatus PatientSpeciesDescription PatientBreedDescription
""".split())
_DICOM_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})

# EXIF tag names (Pillow's ExifTags.TAGS); every GPS tag is a location.
_EXIF = {
    "Artist": "name", "XPAuthor": "name", "CameraOwnerName": "name",
    "DateTime": "date", "DateTimeOriginal": "date", "DateTimeDigitized": "date",
    "ImageDescription": "free_text", "UserComment": "free_text", "XPComment": "free_text",
    "XPSubject": "free_text", "XPTitle": "free_text", "XPKeywords": "free_text",
    "Copyright": "free_text", "DocumentName": "free_text", "PageName": "free_text",
    "HostComputer": "free_text", "MakerNote": "free_text",
    "ImageUniqueID": "id",
    "BodySerialNumber": "device", "LensSerialNumber": "device", "CameraSerialNumber": "device",
}
# PNG keywords predefined by the PNG specification (section 11.3.4.2); others are custom.
_PNG_KEYWORDS = {
    "Title": "free_text", "Author": "name", "Description": "free_text", "Copyright": "free_text",
    "Creation Time": "date", "Disclaimer": "free_text", "Warning": "free_text", "Comment": "free_text",
    "Software": None, "Source": None,  # the writing software and the device model: technical
}
# TIFF baseline/extension tags that carry text about the image rather than its layout.
_TIFF = {269: "free_text", 270: "free_text", 285: "free_text", 306: "date", 315: "name", 316: "free_text", 33432: "free_text", 700: "free_text", 33723: "free_text"}
_TIFF_TECHNICAL_PRIVATE = frozenset({
    33421, 33422, 33550, 33922, 34264, 34735, 34736, 34737,  # CFA, GeoTIFF layout
    34665, 34853,  # EXIF and GPS IFD pointers, read separately
    42112, 42113,  # GDAL metadata and nodata
})


#: Marks a field whose presence counts but whose value is a binary block that is not compared.
PRESENT: list[Any] = []


class HeaderError(Exception):
    """The headers of a file could not be read; ``str(exc)`` is a short reason without values."""


@dataclass(frozen=True)
class HeaderField:
    """One privacy-relevant field of one file.

    Attributes:
        name: the field's name from a fixed dictionary, prefixed by its container
            (``"DICOM PatientName"``, ``"EXIF Artist"``, ``"PNG text Comment"``).
        category: see the module docstring.
        digests: keyed digests of its normalised values (only for :data:`MATCHED` categories);
            never written anywhere.
    """

    name: str
    category: str
    digests: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class FileHeaders:
    """The privacy-relevant fields of one file.

    Attributes:
        format: ``dicom``, ``png``, ``jpeg``, ``tiff`` or ``other``.
        fields: the fields present with a value that is neither empty nor a placeholder.
        patient_key: keyed digest of the DICOM PatientID, used only to group training files by
            patient when the user gave no patient ids.
    """

    format: str
    fields: tuple[HeaderField, ...]
    patient_key: bytes | None = None


def digest(value: str) -> bytes:
    """Keyed digest of a normalised value (comparable within this process only)."""
    return hmac.new(_KEY, value.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()[:16]


def normalise(value: Any) -> str:
    """Text form used for comparisons: case-folded, whitespace collapsed, DICOM name separators trimmed."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = " ".join(str(value).replace("\x00", " ").split()).casefold()
    return text.strip("^= ")


def read_headers(path: str | Path, *, placeholders: Iterable[str] = DEFAULT_PLACEHOLDERS) -> FileHeaders:
    """List the privacy-relevant header fields of one image file.

    Args:
        path: a file that :func:`privaudit.data.readers.read_image` reads.
        placeholders: values that count as absent (compared after :func:`normalise`).

    Raises:
        HeaderError: the file cannot be opened or its headers cannot be parsed.
        MissingDependencyError: a DICOM file and pydicom is not installed.
    """
    path = Path(path)
    skip = {normalise(p) for p in placeholders} | {""}
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        raise HeaderError(f"cannot open: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix in DICOM_EXTENSIONS or _is_dicom(head):
            fmt, raw, patient = "dicom", *_dicom_fields(path)
        elif suffix in TIFF_EXTENSIONS and head[:4] in TIFF_MAGIC:
            fmt, raw, patient = "tiff", _tiff_fields(path), None
        else:
            fmt, raw = _pillow_fields(path)
            patient = None
    except (HeaderError, MissingDependencyError):
        raise
    except Exception as exc:  # any parser failure: the reason names the type only, never a value
        raise HeaderError(f"headers cannot be read ({type(exc).__name__})") from None
    merged: dict[str, tuple[str, set[bytes]]] = {}
    for name, category, values in raw:
        if values is PRESENT:
            merged.setdefault(name, (category, set()))
            continue
        kept = [v for v in (normalise(x) for x in values) if v not in skip]
        if not kept:
            continue
        entry = merged.setdefault(name, (category, set()))
        if category in MATCHED:
            # A one-character value ("1", "M") repeats by chance: present, but never compared.
            entry[1].update(digest(v) for v in kept if len(v) > 1)
    fields = tuple(HeaderField(name, cat, tuple(sorted(d))) for name, (cat, d) in sorted(merged.items()))
    key = None
    if patient is not None and normalise(patient) not in skip:
        key = digest(normalise(patient))
    return FileHeaders(format=fmt, fields=fields, patient_key=key)


def _dicom_fields(path: Path) -> tuple[list[tuple[str, str, list[Any]]], Any]:
    try:
        import pydicom
        from pydicom.uid import UID
    except ImportError:
        raise MissingDependencyError("pydicom", extra="dicom", needed_for="reading DICOM files") from None

    out: list[tuple[str, str, list[Any]]] = []
    with quiet_decoding("pydicom"):
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        # The file meta group (0002) describes the file, not the patient; its instance UID repeats
        # the dataset's SOPInstanceUID.
        for elem in ds.iterall():
            tag = elem.tag
            if tag.group in (0x0002, 0x7FE0) or 0x6000 <= tag.group <= 0x60FF:
                continue
            if tag.is_private:
                if elem.VR not in _DICOM_BINARY_VRS or isinstance(elem.value, str):
                    out.append(("DICOM private tags", "free_text", _values(elem.value)))
                continue
            vr, keyword = elem.VR, elem.keyword
            name = f"DICOM {keyword or str(tag)}"
            if vr == "SQ" or (vr in _DICOM_BINARY_VRS and keyword not in _DICOM_ID):
                continue
            values = _values(elem.value)
            if vr == "PN":
                category = "name"
            elif vr in ("DA", "DT", "TM"):
                category = "date"
            elif vr == "UI":
                values = [v for v in values if not UID(str(v)).type]  # standard UIDs are technical
                category = "uid"
            elif keyword in _DICOM_ID:
                category = "id"
            elif keyword in _DICOM_DEVICE:
                category = "device"
            elif keyword in _DICOM_LOCATION:
                category = "location"
            elif keyword in _DICOM_DEMOGRAPHIC:
                category = "demographic"
            elif keyword in _DICOM_FREE_TEXT or vr in ("LT", "ST", "UT"):
                category = "free_text"
            else:
                continue  # technical: sizes, codes, equipment models
            out.append((name, category, values))
        patient_value = ds.get("PatientID", None)
    return out, patient_value


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [v for v in value if v is not None]
    return [value]


def _pillow_fields(path: Path) -> tuple[str, list[tuple[str, str, list[Any]]]]:
    from PIL import ExifTags, Image

    out: list[tuple[str, str, list[Any]]] = []
    late = False
    with quiet_decoding(), Image.open(path) as img:
        fmt = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg"}.get(img.format or "", "other")
        if fmt == "png":
            late = _png_text_after_image_data(path)
            if late:
                img.load()  # Pillow reads those only while decoding the image
                chunks = dict(img.text)
            else:  # opening has read them all: text chunks are the text-valued entries of info
                chunks = {k: v for k, v in img.info.items() if isinstance(v, str)}
            for keyword, text in chunks.items():
                if keyword == "XML:com.adobe.xmp":
                    out.append(("XMP packet", "free_text", [text]))
                elif keyword in _PNG_KEYWORDS:
                    category = _PNG_KEYWORDS[keyword]
                    if category is not None:
                        out.append((f"PNG text {keyword}", category, [text]))
                else:
                    out.append(("PNG text (custom keyword)", "free_text", [text]))
        info = img.info
        if info.get("comment"):
            out.append(("JPEG comment", "free_text", [info["comment"]]))
        if info.get("xmp"):
            out.append(("XMP packet", "free_text", [info["xmp"]]))
        if info.get("photoshop"):
            out.append(("IPTC/Photoshop block", "free_text", PRESENT))
        # PNG's getexif() decodes the image to look for a late eXIf chunk; the walk above has
        # already said whether there is one.
        exif = img.getexif() if fmt != "png" or late or "exif" in info else Image.Exif()
        out.extend(_exif_fields(exif, ExifTags.TAGS))
        for ifd, table in ((ExifTags.IFD.Exif, ExifTags.TAGS), (ExifTags.IFD.GPSInfo, ExifTags.GPSTAGS)):
            try:
                sub = exif.get_ifd(ifd)
            except Exception:  # a corrupt IFD pointer: the rest of the headers still count
                continue
            out.extend(_exif_fields(sub, table, gps=ifd == ExifTags.IFD.GPSInfo))
    return fmt, out


def _png_text_after_image_data(path: Path) -> bool:
    """Whether a text or EXIF chunk follows the image data (IDAT).

    Pillow parses the chunks before IDAT when it opens a file, and those after it only while it
    decodes the pixels; walking the chunk headers (8 bytes each, data skipped) tells whether that
    decoding is needed, so that headers cost a few reads per file rather than a second decode.
    """
    import struct

    with open(path, "rb") as handle:
        handle.seek(8)
        seen_data = False
        while True:
            head = handle.read(8)
            if len(head) < 8:
                return False
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IDAT":
                seen_data = True
            elif kind == b"IEND":
                return False
            elif seen_data and kind in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
                return True
            handle.seek(length + 4, 1)


def _exif_fields(tags: Any, table: dict[int, str], *, gps: bool = False) -> list[tuple[str, str, list[Any]]]:
    out = []
    for code, value in tags.items():
        if code in (0x8769, 0x8825, 0xA005):  # pointers to the EXIF, GPS and interoperability IFDs
            continue
        name = table.get(code)
        category = "location" if gps else _EXIF.get(name or "")
        if category is None:
            continue
        label = f"EXIF {name}" if name else f"EXIF tag 0x{code:04X}"
        out.append((label, category, _exif_values(value)))
    return out


def _exif_values(value: Any) -> list[Any]:
    if isinstance(value, bytes):
        # UserComment starts with an 8-byte character code; XP* tags are UTF-16LE.
        if value[:8] in (b"ASCII\x00\x00\x00", b"UNICODE\x00", b"JIS\x00\x00\x00\x00\x00", b"\x00" * 8):
            value = value[8:]
        for encoding in ("utf-8", "utf-16-le"):
            try:
                return [value.decode(encoding).strip("\x00")]
            except UnicodeDecodeError:
                continue
        return [value.hex()]
    return _values(value) if not isinstance(value, dict) else [json.dumps(value, default=str)]


def _tiff_fields(path: Path) -> list[tuple[str, str, list[Any]]]:
    import tifffile

    out: list[tuple[str, str, list[Any]]] = []
    with quiet_decoding("tifffile"), tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        for tag in page.tags.values():
            code, value = tag.code, tag.value
            if code == 270 and (page.is_shaped or str(value).startswith("ImageJ=")):
                continue  # tifffile's and ImageJ's own layout descriptions
            if code == 34665 and isinstance(value, dict):
                out.extend((f"EXIF {k}", _EXIF[k], _exif_values(v)) for k, v in value.items() if k in _EXIF)
            elif code == 34853 and isinstance(value, dict):
                out.extend((f"EXIF {k}", "location", _exif_values(v)) for k, v in value.items())
            elif code in _TIFF:
                out.append((f"TIFF {tag.name}", _TIFF[code], _exif_values(value)))
            elif code >= 32768 and code not in _TIFF_TECHNICAL_PRIVATE:
                out.append((f"TIFF tag {code}", "free_text", _exif_values(value)))
    return out
