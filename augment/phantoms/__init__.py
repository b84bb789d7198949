"""The embedded demo data set: CT-like abdominal phantoms with lesion masks.

Each patient is drawn from a numpy Generator seeded by ``(cfg.seed, patient index)``: a body
outline with skin, subcutaneous fat and the abdominal wall; liver (with portal and hepatic
veins), spleen, stomach (gas-fluid level), pancreas, kidneys, gallbladder, bowel loops and
colon (gas, fluid, stool), aorta, IVC and mesenteric vessels, psoas and paraspinal muscles,
vertebrae (cortical rim, cancellous body, discs, posterior elements), ribs with costal
cartilage, and lung bases with the diaphragm in the upper slices. Lesion patients get one to
four lesions (ellipsoids or lobulated, hypo- or hyperdense), mostly in the liver.

Painting works on a tissue label volume; the HU volume is then the tissue's mean HU plus a
smooth texture, blurred (partial volume) and noised. Array order is (Z, Y, X): z from inferior
(index 0) to superior, y from anterior to posterior, x from the patient's right to left, which
is DICOM's LPS with ImageOrientationPatient (1, 0, 0, 0, 1, 0).

Outputs (written by :func:`augment.phantoms.stage.make_phantoms`, atomically):
``dicom/<series>/<sop uid>.dcm``, ``nifti/imagesTr|labelsTr/<case>.nii.gz`` with
``nifti/dataset.json`` (Medical Segmentation Decathlon layout) and ``labels.csv`` (patient,
class).
"""
