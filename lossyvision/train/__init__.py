"""Training: classifier recipes (pretrained/finetune/expert/stability), restoration GAN, segmentation."""
