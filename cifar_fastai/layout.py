"The files of a run folder, named once: every module that reads or writes one takes its name from here"

__all__ = ['CONFIG', 'METRICS', 'WEIGHTS', 'EXPORT', 'CHECKPOINT', 'LR_PLOT', 'LR_RECORD', 'REPORT', 'FAITHFULNESS',
           'PICTURES']

CONFIG = 'config.json'        # every option, the rates found and used, data, versions, machine
METRICS = 'metrics.csv'       # a row an epoch
WEIGHTS = 'model.pth'         # the trained weights, a plain `state_dict`
EXPORT = 'export.pkl'         # fastai's `Learner.export`
CHECKPOINT = 'checkpoint.pth'  # the last epoch's end, or a point inside the next one
LR_PLOT = 'lr_find.png'       # the range test, its suggestions and the rate used
LR_RECORD = 'lr_find.json'    # the range test's suggestions, written by `cifar-fastai lr-find`
REPORT = 'report.md'
FAITHFULNESS = 'faithfulness.md'
# the pictures of `cifar-fastai interpret`, by what they show
PICTURES = dict(class_accuracy='class_accuracy.png', curves='curves.png', augmentations='augmentations.png',
                misclassified='misclassified.png', gradcam='gradcam.png', confusion_matrix='confusion_matrix.png',
                top_losses='top_losses.png')
