"""The reading as a DICOM Structured Report: Comprehensive 3D SR, TID 1500, in the source study (highdicom).

IHE AI Results (AIR) stores an AI result as a TID 1500 Measurement Report in the source image's study.
One report per source instance:

* patient, study (Study Instance UID, accession) copied from the source image by highdicom; a new
  series; the source image referenced as evidence and as the measurement group's source image;
* one Measurements and Qualitative Evaluations group (TID 1501): finding type pneumonia
  (SCT 233604007), a qualitative evaluation pneumonia = present / absent (DCM 121053 / 121054) at the
  bundle's threshold, the probability as "Certainty of Finding" (DCM 111012, unit 1), the threshold as
  "Threshold Value" (DCM 122411, unit 1), and the algorithm (TID 4019): name = the bundle, version =
  the bundle's digest, parameters = the threshold;
* Verification Flag UNVERIFIED (no person has checked it); completion COMPLETE, not final.

The SR's SOP Instance UID and Series Instance UID are derived from the source SOP Instance UID and
the bundle digest (``generate_uid(entropy_srcs=...)``), so building it again after a crash gives the
same UIDs: a PACS that receives it twice holds one instance.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

PNEUMONIA = ("233604007", "SCT", "Pneumonia")
PLAIN_CHEST_XRAY = ("399208008", "SCT", "Plain chest X-ray")
SERIES_NUMBER = 9901  # where the node's results go in the study
MANUFACTURER = "edgecxr"


def sr_uids(source_uid: str, bundle_digest: str) -> tuple[str, ...]:
    """(SR SOP Instance UID, SR Series Instance UID, tracking UID): the same source and bundle give the same UIDs."""
    from pydicom.uid import generate_uid

    return tuple(str(generate_uid(entropy_srcs=[f"edgecxr-sr-{part}", source_uid, bundle_digest]))
                 for part in ("instance", "series", "tracking"))


# Type 2 patient and study attributes a report copies from its source. Field headers break their VRs
# often (Patient's Sex "Q", a birth date "2015", a time "25:99"), and highdicom refuses to copy them;
# the report then carries them empty (Type 2 allows it) and the results log names what was blanked.
_DA, _TM = ("PatientBirthDate", "StudyDate"), ("StudyTime",)
SEXES = {"M", "F", "O"}


def clean_header(source: Any) -> tuple[Any, list[str]]:
    """A copy of ``source`` (a header) with the values a report cannot carry blanked, and their names."""
    import copy

    from pydicom.valuerep import DA, TM

    ds = copy.deepcopy(source)
    blanked = []
    for name in ("PatientSex", *_DA, *_TM):
        if name not in ds:
            continue
        v = str(ds.get(name, "") or "").strip()
        if not v:
            continue
        ok = True
        try:
            if name == "PatientSex":
                ok = v.upper() in SEXES
            elif name in _DA:
                DA(v)
                ok = len(v) == 8 and v.isdigit()
            else:
                TM(v)
        except (ValueError, TypeError, OverflowError):
            ok = False
        if not ok:
            setattr(ds, name, "")
            blanked.append(name)
    return ds, blanked


@dataclass(frozen=True)
class Finding:
    prob: float
    positive: bool
    threshold: float
    bundle: str
    digest: str


def build_sr(source: Any, finding: Finding, device_uid: str, ae_title: str) -> Any:
    """A highdicom Comprehensive3DSR for one source image (a pydicom Dataset; pixel data not needed)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sop_uid, series_uid, track_uid = sr_uids(str(source.SOPInstanceUID), finding.digest)
    pneumonia = hd.sr.CodedConcept(*PNEUMONIA)
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"edgecxr {finding.bundle}"[:64], version=finding.digest,
        parameters=[f"threshold={finding.threshold:.6g}"], manufacturer=MANUFACTURER)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=track_uid,
                                                     identifier="pneumonia classification"),
        finding_type=pneumonia,
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=pneumonia, value=codes.DCM.Present if finding.positive else codes.DCM.Absent)],
        measurements=[
            hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding, value=round(float(finding.prob), 6),
                              unit=codes.UCUM.NoUnits, algorithm_id=algorithm),
            hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=round(float(finding.threshold), 6),
                              unit=codes.UCUM.NoUnits),
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=ae_title[:64], manufacturer_name=MANUFACTURER, model_name="edgecxr serve"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept(*PLAIN_CHEST_XRAY),
        imaging_measurements=[group],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = hd.sr.Comprehensive3DSR(
            evidence=[source], content=report, series_instance_uid=series_uid, series_number=SERIES_NUMBER,
            sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER,
            is_complete=True, is_final=False, is_verified=False,
            series_description="edgecxr pneumonia (AI result, unverified)")
    return sr


# ---------------------------------------------------------------- the heatmap (--heatmap)
HEATMAP_SERIES_NUMBER = 9902
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS"


def sc_uids(source_uid: str, bundle_digest: str) -> tuple[str, str]:
    """(SC SOP Instance UID, SC Series Instance UID), derived as the SR's are."""
    from pydicom.uid import generate_uid

    return tuple(str(generate_uid(entropy_srcs=[f"edgecxr-sc-{part}", source_uid, bundle_digest]))  # type: ignore[return-value]
                 for part in ("instance", "series"))


def burn_banner(rgb: Any, text: str = NOT_FOR_DIAGNOSIS) -> Any:
    """The same picture with a band on top that says ``text`` in its pixels (a viewer that drops overlays
    and annotations still shows it)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from edgecxr.device.explain import _font

    im = Image.fromarray(np.asarray(rgb, np.uint8), "RGB")
    w, h = im.size
    fs = max(14, min(40, w // 18))
    band = int(fs * 1.6)
    out = Image.new("RGB", (w, h + band), (160, 0, 0))
    out.paste(im, (0, band))
    d = ImageDraw.Draw(out)
    font = _font(fs)
    tw = d.textlength(text, font=font)
    d.text(((w - tw) / 2, (band - fs) / 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(out, np.uint8)


def build_heatmap_sc(source: Any, rgb: Any, finding: Finding) -> Any:
    """A Secondary Capture (RGB) of the heatmap in the source study, its own series, "NOT FOR DIAGNOSIS"
    burned into the pixels and said in the header (BurnedInAnnotation YES, ImageComments)."""
    import highdicom as hd
    import numpy as np

    sop_uid, series_uid = sc_uids(str(source.SOPInstanceUID), finding.digest)
    px = np.ascontiguousarray(burn_banner(rgb))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=px, photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8, coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=series_uid,
            series_number=HEATMAP_SERIES_NUMBER, sop_instance_uid=sop_uid, instance_number=1,
            manufacturer=MANUFACTURER, patient_orientation=("L", "F") if "PatientOrientation" not in source
            else tuple(source.PatientOrientation)[:2],
            series_description=f"edgecxr heatmap ({NOT_FOR_DIAGNOSIS})"[:64])
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = "CHEST"  # only chest films get here; so Laterality (2C, paired parts only) stays out
    sc.ImageComments = f"{NOT_FOR_DIAGNOSIS}: occlusion heatmap of {finding.bundle} (p={finding.prob:.4f}, " \
                       f"threshold {finding.threshold:.4f})"
    sc.ConversionType = "WSD"
    return sc
